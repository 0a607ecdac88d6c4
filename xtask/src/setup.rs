//! Installing what the build and the tests need, or saying exactly what is missing.

use std::process::Command;

use crate::util::{have, output, run, Fail};

const TARGETS: [&str; 2] = ["x86_64-unknown-none", "aarch64-unknown-none"];

/// Debian packages by the program they provide.
const PACKAGES: [(&str, &str); 2] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-system-aarch64", "qemu-system-arm"),
];

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// Installs missing rustup targets and QEMU.
pub fn setup() -> Result<(), Fail> {
    rust_targets()?;
    debian(&PACKAGES)
}

fn rust_targets() -> Result<(), Fail> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .ok_or_else(|| Fail("rustup is needed to install the bare-metal targets".into()))?;
    let missing: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: adding rust targets {}", missing.join(" "));
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&missing))
}

/// Installs the Debian packages whose programs are missing (root only).
pub fn debian(packages: &[(&str, &str)]) -> Result<(), Fail> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(prog, _)| !have(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() || !have("apt-get") {
        return Err(Fail(format!(
            "missing Debian packages {}; install them with:\n  sudo sh -c '{command}'",
            missing.join(" ")
        )));
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Graphviz's `dot`, for `cargo xtask capgraph`.
pub fn graphviz() -> Result<(), Fail> {
    debian(&[("dot", "graphviz")])
}

/// The fuzzer needs a nightly toolchain and cargo-fuzz.
pub fn fuzz_tools() -> Result<(), Fail> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        return Err(Fail(
            "fuzzing needs a nightly toolchain (sanitizer flags): rustup toolchain install nightly"
                .into(),
        ));
    }
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        println!("setup: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
