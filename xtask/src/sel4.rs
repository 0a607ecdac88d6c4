//! Building the seL4 kernel the project runs on.
//!
//! seL4 5.0.0 is not published in any registry this project can use, but the crates.io
//! package `sel4-sys` 0.0.28 ships the complete kernel source tree in its `seL4/` folder.
//! `sel4/sys/Cargo.toml` depends on that package under a never-true `cfg`, so cargo
//! resolves and downloads it without ever compiling it; `cargo metadata` then tells us
//! where it is. Cargo's copy is treated as read-only: the tree is copied to
//! `target/sel4/src`, the project's configuration and the build fixes are applied to the
//! copy, and the kernel is built in `target/sel4/build` with the machine's gcc.
//!
//! The build fixes, each applied by code below and covered by the cache stamp:
//! - the project's `sel4/config/autoconf.h` replaces the shipped one (a sel4test
//!   configuration with the kernel's own IOMMU support on and printing off);
//! - `tools/circular_includes.py` accepts gcc 12's `# 0 "kernel_all.c"` line marker;
//! - the generator scripts run under `python3` (their shebang says `python`);
//! - the warning list given to make leaves out `address-of-packed-member` and
//!   `array-bounds`, which gcc 12 reports on this kernel version under `-Werror`.
//!
//! The result is cached: `target/sel4/stamp` holds a hash of the configuration, the
//! fixes, the make command and the source version, and everything is rebuilt from a fresh
//! copy when it changes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{have, output, root, run, Fail};

/// The crates.io package that carries the kernel source, and its exact version.
const SOURCE_PACKAGE: &str = "sel4-sys";
const SOURCE_VERSION: &str = "0.0.28";

/// Warnings the kernel is compiled with (`-W<each>`). The Makefile's own list plus `-Werror`
/// minus what gcc 12 flags in seL4 5.0.0's packed structures and array walks.
const WARNINGS: &str = "all error strict-prototypes missing-prototypes nested-externs \
                        missing-declarations undef pointer-arith no-nonnull \
                        no-address-of-packed-member no-array-bounds";

/// Python modules the kernel's generator scripts import.
const PYTHON_MODULES: [&str; 3] = ["six", "ply", "tempita"];

/// Bumped whenever the fixes applied to the copied tree change, so that the stamp changes.
const FIXES_REVISION: &str = "fixes-1: autoconf, circular_includes regex, python3 shebangs";

/// What a kernel build produced.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// The copied (and fixed) seL4 source tree: `libsel4/include/interfaces/sel4.xml`,
    /// the arch and sel4_arch XML, headers and bitfield specs live under it.
    pub source_dir: PathBuf,
    /// The make directory: the kernel's generated headers (`api/invocation.h`,
    /// `arch/api/sel4_invocation.h`, `arch/api/invocation.h`, `arch/api/syscall.h`;
    /// make deletes the intermediate bitfield headers) and the preprocessed kernel.
    pub build_dir: PathBuf,
    /// The project's kernel configuration (`sel4/config/autoconf.h`).
    pub autoconf: PathBuf,
    /// The kernel as linked (ELF64).
    pub kernel_elf: PathBuf,
    /// The kernel as ELF32 for QEMU's multiboot loader (`-kernel`).
    pub kernel32_elf: PathBuf,
}

impl KernelBuild {
    /// Environment for building (and testing) the bindings crate (`sel4/sys`) and
    /// anything that depends on it, so that the bindings come from the very tree and
    /// configuration the kernel was built from. `SEL4_BUILD_DIR` is read by the bindings'
    /// tests only, to compare with the kernel's own generated headers.
    pub fn bindings_env(&self) -> [(&'static str, &Path); 3] {
        [
            ("SEL4_SOURCE_DIR", self.source_dir.as_path()),
            ("SEL4_AUTOCONF", self.autoconf.as_path()),
            ("SEL4_BUILD_DIR", self.build_dir.as_path()),
        ]
    }
}

/// Builds the kernel (or reuses the cached build) and returns where everything is.
pub fn build_kernel() -> Result<KernelBuild, Fail> {
    let pristine = kernel_source()?;
    let autoconf = root().join("sel4/config/autoconf.h");
    let config = fs::read(&autoconf)
        .map_err(|e| Fail(format!("cannot read {}: {e}", autoconf.display())))?;
    let version = fs::read_to_string(pristine.join("VERSION"))
        .map_err(|e| Fail(format!("{} is not a seL4 tree: {e}", pristine.display())))?;

    let base = root().join("target/sel4");
    let source_dir = base.join("src");
    let build_dir = base.join("build");
    let stamp_path = base.join("stamp");
    let build = KernelBuild {
        kernel_elf: build_dir.join("kernel.elf"),
        kernel32_elf: build_dir.join("kernel32.elf"),
        source_dir,
        build_dir,
        autoconf,
    };

    let make_args = make_args(&build.source_dir);
    let mut stamp = Fnv::new();
    for part in [
        config.as_slice(),
        version.as_bytes(),
        SOURCE_VERSION.as_bytes(),
        FIXES_REVISION.as_bytes(),
        make_args.join("\n").as_bytes(),
    ] {
        stamp.write(part);
        stamp.write(&[0]);
    }
    let stamp = format!("{:016x}\n", stamp.finish());
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && build.kernel32_elf.is_file()
    {
        return Ok(build);
    }

    build_tools()?;
    println!(
        "sel4: building seL4 {} from {}",
        version.trim(),
        pristine.display()
    );
    // A fresh copy each time the stamp changes: make's timestamps cannot see a changed
    // autoconf.h reliably, and the fixes must apply to unmodified files.
    remove_dir(&base)?;
    copy_tree(&pristine, &build.source_dir)?;
    apply_fixes(&build.source_dir, &config)?;
    fs::create_dir_all(&build.build_dir).map_err(io_fail(&build.build_dir))?;

    run(Command::new("make")
        .current_dir(&build.build_dir)
        .args(&make_args)
        .arg("-j2"))?;
    run(Command::new("objcopy")
        .args(["-O", "elf32-i386"])
        .arg(&build.kernel_elf)
        .arg(&build.kernel32_elf))?;
    fs::write(&stamp_path, stamp).map_err(io_fail(&stamp_path))?;
    println!("sel4: kernel at {}", build.kernel32_elf.display());
    Ok(build)
}

/// QEMU's exit status when the hello root task succeeds: it writes 0 to the
/// `isa-debug-exit` device, and QEMU exits with `(value << 1) | 1`. Failure writes 1 (3).
pub const SUCCESS_STATUS: i32 = 1;

/// Builds the hello root task (`sel4/apps/hello`) against the tree and configuration
/// `kernel` was built from; returns its ELF.
pub fn build_hello(kernel: &KernelBuild) -> Result<PathBuf, Fail> {
    run(apps_cargo(kernel).args(["-p", "sel4-hello"]))?;
    Ok(apps_release().join("sel4-hello"))
}

/// `cargo build --release` in `sel4/apps` with the bindings' environment.
fn apps_cargo(kernel: &KernelBuild) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root().join("sel4/apps"))
        .args(["build", "--release", "--quiet"]);
    for (key, value) in kernel.bindings_env() {
        c.env(key, value);
    }
    c
}

/// Where the programs of `sel4/apps` are built.
fn apps_release() -> PathBuf {
    root().join("sel4/apps/target/x86_64-unknown-none/release")
}

/// The QEMU command line (program first) that boots `kernel` with `root_task` as the
/// root task on q35 with `iommu` (the intel-iommu device and its options), `devices`
/// and the `isa-debug-exit` device, under TCG (KVM dies in the kernel's FPU
/// initialisation on this setup).
pub fn qemu_command(
    kernel: &KernelBuild,
    root_task: &Path,
    iommu: &str,
    devices: &[&str],
) -> Vec<String> {
    let mut argv: Vec<String> = [
        "qemu-system-x86_64",
        "-machine",
        "q35",
        "-cpu",
        "Haswell,+fsgsbase,+pdpe1gb",
        "-m",
        "512M",
        "-nographic",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(kernel.kernel32_elf.display().to_string());
    argv.push("-initrd".into());
    argv.push(root_task.display().to_string());
    for device in [iommu]
        .into_iter()
        .chain(devices.iter().copied())
        .chain(["isa-debug-exit,iobase=0xf4,iosize=4"])
    {
        argv.push("-device".into());
        argv.push(device.into());
    }
    argv
}

/// Builds the kernel and the hello root task; returns the QEMU command line. Its shape
/// fits `images::Image::build`; note [`SUCCESS_STATUS`].
pub fn hello_image() -> Result<Vec<String>, Fail> {
    let kernel = build_kernel()?;
    let task = build_hello(&kernel)?;
    Ok(qemu_command(&kernel, &task, "intel-iommu", &[]))
}

/// The devices of the VT-d image by default: an edu on the root bus (00:03.0) and one
/// behind a PCIe root port (bus 1 once firmware numbers it: 01:00.0), so the two have
/// requester IDs on different buses.
const VTD_DEVICES: [&str; 3] = [
    "edu,addr=3",
    "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=4",
    "edu,bus=rp1",
];

/// Builds the programs of the seL4 image (`sel4/apps`): the processes first, then init
/// with their ELFs embedded. Returns init's ELF.
pub fn build_apps(kernel: &KernelBuild) -> Result<PathBuf, Fail> {
    let release = apps_release();
    run(apps_cargo(kernel).args(["-p", "vtd-scenarios"]))?;
    run(apps_cargo(kernel)
        .args(["-p", "sel4-init"])
        .env("SEL4_PROGRAM_VTD_SCENARIOS", release.join("vtd-scenarios")))?;
    Ok(release.join("sel4-init"))
}

/// The VT-d image in legacy mode (`-device intel-iommu`).
pub fn vtd_legacy_image() -> Result<Vec<String>, Fail> {
    let kernel = build_kernel()?;
    let init = build_apps(&kernel)?;
    Ok(qemu_command(
        &kernel,
        &init,
        "intel-iommu,intremap=off",
        &VTD_DEVICES,
    ))
}

/// The VT-d image in scalable mode (`x-scalable-mode=on,x-pasid-mode=on`).
pub fn vtd_scalable_image() -> Result<Vec<String>, Fail> {
    let kernel = build_kernel()?;
    let init = build_apps(&kernel)?;
    Ok(qemu_command(
        &kernel,
        &init,
        "intel-iommu,intremap=off,x-scalable-mode=on,x-pasid-mode=on",
        &VTD_DEVICES,
    ))
}

/// The make command line (without `-j`), which is part of the cache stamp.
fn make_args(source: &Path) -> Vec<String> {
    let src = source.display();
    vec![
        format!("--file={src}/Makefile"),
        format!("SOURCE_ROOT={src}"),
        "ARCH=x86".into(),
        "SEL4_ARCH=x86_64".into(),
        "PLAT=pc99".into(),
        "DEBUG=1".into(),
        "PYTHON=python3".into(),
        format!("WARNINGS={WARNINGS}"),
    ]
}

/// Makes sure cargo has downloaded `sel4-sys` and returns the `seL4/` folder inside
/// cargo's copy of it. `cargo metadata` downloads every package of the resolve, including
/// the never-compiled one.
pub fn kernel_source() -> Result<PathBuf, Fail> {
    let manifest = root().join("sel4/sys/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let json = output(
        Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest),
    )
    .ok_or_else(|| {
        Fail(format!(
            "`cargo metadata --manifest-path {}` failed: cargo must be able to download \
             {SOURCE_PACKAGE} {SOURCE_VERSION} (it carries the seL4 source)",
            manifest.display()
        ))
    })?;
    let package = package_manifest(&json, SOURCE_PACKAGE, SOURCE_VERSION).ok_or_else(|| {
        Fail(format!(
            "{SOURCE_PACKAGE} {SOURCE_VERSION} is not in the dependency graph of {}",
            manifest.display()
        ))
    })?;
    let tree = package
        .parent()
        .map(|dir| dir.join("seL4"))
        .filter(|dir| dir.join("Makefile").is_file())
        .ok_or_else(|| Fail(format!("no seL4/Makefile beside {}", package.display())))?;
    Ok(tree)
}

/// Finds `manifest_path` of package `name` at `version` in `cargo metadata` JSON output.
/// Cargo prints each package as one object whose keys start with `"name"` and `"version"`;
/// a full JSON parser is not worth a dependency here.
fn package_manifest(json: &str, name: &str, version: &str) -> Option<PathBuf> {
    let key = format!("\"name\":\"{name}\",\"version\":\"{version}\"");
    let start = json.find(&key)?;
    let rest = &json[start..];
    let field = "\"manifest_path\":\"";
    let path_start = rest.find(field)? + field.len();
    let path_len = rest[path_start..].find('"')?;
    Some(PathBuf::from(&rest[path_start..path_start + path_len]))
}

/// Installs (or names) what the kernel build needs besides gcc.
fn build_tools() -> Result<(), Fail> {
    crate::setup::debian(&[
        ("gcc", "gcc"),
        ("make", "make"),
        ("objcopy", "binutils"),
        ("xmllint", "libxml2-utils"),
    ])?;
    if !have("python3") {
        crate::setup::debian(&[("python3", "python3")])?;
    }
    let import = format!("import {}", PYTHON_MODULES.join(", "));
    if output(Command::new("python3").args(["-c", &import])).is_some() {
        return Ok(());
    }
    let is_root = output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet"]);
    if !is_root {
        pip.arg("--user");
    }
    pip.args(PYTHON_MODULES);
    println!(
        "sel4: installing python modules {}",
        PYTHON_MODULES.join(" ")
    );
    run(&mut pip).map_err(|Fail(msg)| {
        Fail(format!(
            "{msg}\nthe seL4 generator scripts need the python3 modules {}; install them \
             with: python3 -m pip install --user {}",
            PYTHON_MODULES.join(", "),
            PYTHON_MODULES.join(" ")
        ))
    })
}

/// Applies the project's configuration and the build fixes to the copied tree.
fn apply_fixes(tree: &Path, config: &[u8]) -> Result<(), Fail> {
    let autoconf = tree.join("include/plat/pc99/autoconf.h");
    fs::write(&autoconf, config).map_err(io_fail(&autoconf))?;

    // gcc 12 numbers the first line marker of a preprocessed file 0, older gcc 1.
    replace_once(
        &tree.join("tools/circular_includes.py"),
        r#"re.compile(r'^# 1 "kernel_all\.c"')"#,
        r#"re.compile(r'^# [01] "kernel_all\.c"')"#,
    )?;

    // The Makefile runs these scripts directly; `python` may not exist, `python3` must.
    for dir in ["tools", "libsel4/tools"] {
        let dir = tree.join(dir);
        for entry in fs::read_dir(&dir).map_err(io_fail(&dir))? {
            let path = entry.map_err(io_fail(&dir))?.path();
            if path.extension().is_some_and(|e| e == "py") {
                let text = fs::read_to_string(&path).map_err(io_fail(&path))?;
                if let Some(body) = text.strip_prefix("#!/usr/bin/env python\n") {
                    let fixed = format!("#!/usr/bin/env python3\n{body}");
                    fs::write(&path, fixed).map_err(io_fail(&path))?;
                }
            }
        }
    }
    Ok(())
}

/// Replaces exactly one occurrence of `from` in `path`; fails if the text is not there,
/// so that a changed upstream file is noticed instead of silently left unfixed.
fn replace_once(path: &Path, from: &str, to: &str) -> Result<(), Fail> {
    let text = fs::read_to_string(path).map_err(io_fail(path))?;
    if text.matches(from).count() != 1 {
        return Err(Fail(format!(
            "{}: expected exactly one `{from}` to fix",
            path.display()
        )));
    }
    fs::write(path, text.replacen(from, to, 1)).map_err(io_fail(path))
}

/// Copies a directory tree, keeping file permissions (the tools must stay executable).
fn copy_tree(from: &Path, to: &Path) -> Result<(), Fail> {
    fs::create_dir_all(to).map_err(io_fail(to))?;
    for entry in fs::read_dir(from).map_err(io_fail(from))? {
        let entry = entry.map_err(io_fail(from))?;
        let kind = entry.file_type().map_err(io_fail(&entry.path()))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target).map_err(io_fail(&entry.path()))?;
            // Cargo's registry copy is read-only for some users; the copy must be writable
            // because the fixes edit it and the Makefile deletes stale generated headers.
            let mut perms = fs::metadata(&target)
                .map_err(io_fail(&target))?
                .permissions();
            #[allow(clippy::permissions_set_readonly_false)] // only the owner's copy, on purpose
            perms.set_readonly(false);
            fs::set_permissions(&target, perms).map_err(io_fail(&target))?;
        }
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), Fail> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_fail(dir)(e)),
        _ => Ok(()),
    }
}

fn io_fail(path: &Path) -> impl Fn(std::io::Error) -> Fail + '_ {
    move |e| Fail(format!("{}: {e}", path.display()))
}

/// 64-bit FNV-1a: a stable hash for the cache stamp (std's hasher may change between
/// releases, which would only cost a rebuild, but a stable one keeps stamps comparable).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_package_manifest_in_metadata() {
        let json = r#"{"packages":[{"name":"other","version":"1.0.0","manifest_path":"/x/Cargo.toml"},{"name":"sel4-sys","version":"0.0.28","id":"q","manifest_path":"/reg/sel4-sys-0.0.28/Cargo.toml"}]}"#;
        assert_eq!(
            package_manifest(json, "sel4-sys", "0.0.28"),
            Some(PathBuf::from("/reg/sel4-sys-0.0.28/Cargo.toml"))
        );
        assert_eq!(package_manifest(json, "sel4-sys", "0.0.27"), None);
    }

    #[test]
    fn stamp_hash_is_stable() {
        let mut h = Fnv::new();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
