//! Links init with the image's linker script and embeds the programs it starts: xtask
//! builds them first and names each ELF in `SEL4_PROGRAM_<NAME>`.

use std::env;

#[path = "../link.rs"]
mod link;

/// Programs init can start (the names its system description uses).
const PROGRAMS: [&str; 1] = ["VTD_SCENARIOS"];

fn main() {
    link::link_with_script();
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
