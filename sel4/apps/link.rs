//! Build-script code every program of the workspace shares (included by each build.rs):
//! the final link uses the workspace's linker script, given by absolute path so the
//! build works from any directory, and a section the script does not place is an error.

/// Passes `../link.ld` (relative to the program's manifest) to the program's link.
pub fn link_with_script() {
    let dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let script = dir.join("../link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--orphan-handling=error");
}
