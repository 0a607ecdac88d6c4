//! Links init with the image's linker script and embeds the programs it starts: xtask
//! builds them first and names each ELF in `SEL4_PROGRAM_<NAME>`.

use std::env;
use std::path::PathBuf;

/// Programs init can start (the names its system description uses).
const PROGRAMS: [&str; 1] = ["VTD_SCENARIOS"];

fn main() {
    let dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = dir.join("../link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--orphan-handling=error");
    for name in PROGRAMS {
        let var = format!("SEL4_PROGRAM_{name}");
        println!("cargo:rerun-if-env-changed={var}");
        let path = env::var(&var).unwrap_or_else(|_| {
            panic!("{var} must name the program's ELF (cargo xtask builds and sets it)")
        });
        println!("cargo:rerun-if-changed={path}");
        println!("cargo:rustc-env={var}={path}");
    }
}
