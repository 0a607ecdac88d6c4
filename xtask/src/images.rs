//! Bootable QEMU images: how each is built and run, and how its output is judged.
//!
//! An image prints one line per scenario, `PASS <name>` or `FAIL <name>: <reason>`, then
//! `<N> passed, <M> failed`, and ends QEMU with an exit status. A run succeeds only if
//! QEMU exits with success before the timeout and the printed lines agree: at least one
//! PASS, no FAIL, and a closing line that counts them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{self, root, Fail};

pub struct Image {
    pub name: &'static str,
    /// Shown by `cargo xtask demo`.
    pub demo: bool,
    /// Longest a run may take.
    pub timeout: Duration,
    /// QEMU's exit status when the image reports success (semihosting exit: 0;
    /// `isa-debug-exit`: `(value << 1) | 1`, so 1 for a 0 written).
    pub success_status: i32,
    /// Builds the image; returns the QEMU command line (program and arguments) without the
    /// extra arguments given after `--`.
    pub build: fn() -> Result<Vec<String>, Fail>,
}

/// Every image, in the order `cargo xtask test` runs them.
pub fn all() -> &'static [Image] {
    static IMAGES: [Image; 4] = [
        Image {
            name: "aarch64-smmuv3",
            demo: true,
            timeout: Duration::from_secs(300),
            success_status: 0,
            build: aarch64_smmuv3,
        },
        Image {
            name: "x86_64-sel4-boot",
            demo: true,
            timeout: Duration::from_secs(120),
            success_status: crate::sel4::SUCCESS_STATUS,
            build: crate::sel4::hello_image,
        },
        Image {
            name: "x86_64-sel4",
            demo: true,
            timeout: Duration::from_secs(300),
            success_status: crate::sel4::SUCCESS_STATUS,
            build: crate::sel4::vtd_legacy_image,
        },
        Image {
            name: "x86_64-sel4-scalable",
            demo: false,
            timeout: Duration::from_secs(300),
            success_status: crate::sel4::SUCCESS_STATUS,
            build: crate::sel4::vtd_scalable_image,
        },
    ];
    &IMAGES
}

/// Bare metal on QEMU's Arm `virt` machine with an SMMUv3. Default devices: an edu on the
/// root bus and one behind a PCIe root port (two buses, two StreamIDs). edu masks DMA
/// addresses to 28 bits unless told otherwise, and RAM starts at 1 GiB here.
fn aarch64_smmuv3() -> Result<Vec<String>, Fail> {
    let elf = build_bare_metal(
        "aarch64-smmuv3",
        "aarch64-smmuv3-image",
        "aarch64-unknown-none",
    )?;
    let args = [
        "qemu-system-aarch64",
        "-M",
        "virt,iommu=smmuv3",
        "-cpu",
        "cortex-a57",
        "-m",
        "512M",
        "-nographic",
        "-no-reboot",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        elf.to_str().unwrap(),
        "-device",
        "edu,dma_mask=0xffffffffffffffff",
        "-device",
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
        "-device",
        "edu,bus=rp1,dma_mask=0xffffffffffffffff",
    ];
    Ok(args.iter().map(|s| s.to_string()).collect())
}

pub fn names() -> Vec<&'static str> {
    let names: Vec<&str> = all().iter().map(|i| i.name).collect();
    if names.is_empty() {
        vec!["(none yet)"]
    } else {
        names
    }
}

pub fn find(name: &str) -> Option<&'static Image> {
    all().iter().find(|i| i.name == name)
}

/// What an image printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// The closing line's counts.
    pub closing: Option<(usize, usize)>,
}

impl Summary {
    pub fn read_line(&mut self, line: &str) {
        let line = line.trim_matches(['\r', '\n']);
        if let Some(name) = line.strip_prefix("PASS ") {
            self.passed.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            self.failed.push(rest.to_string());
        } else if let Some(counts) = parse_closing(line) {
            self.closing = Some(counts);
        }
    }

    /// Why the output does not show a clean run, if it does not.
    pub fn verdict(&self) -> Result<(), String> {
        if !self.failed.is_empty() {
            return Err(format!(
                "{} scenario(s) failed: {}",
                self.failed.len(),
                self.failed.join("; ")
            ));
        }
        match self.closing {
            None => Err("no closing `<N> passed, <M> failed` line".into()),
            Some((_, f)) if f != 0 => Err(format!("closing line reports {f} failed")),
            Some((0, _)) => Err("no scenario ran".into()),
            Some((p, _)) if p != self.passed.len() => Err(format!(
                "closing line says {p} passed but {} PASS lines were printed",
                self.passed.len()
            )),
            Some(_) => Ok(()),
        }
    }
}

fn parse_closing(line: &str) -> Option<(usize, usize)> {
    let (p, f) = line.trim().split_once(" passed, ")?;
    let f = f.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

/// Where each run's full output is saved: `target/qemu-logs/<image>.log`.
pub fn log_dir() -> PathBuf {
    root().join("target").join("qemu-logs")
}

/// The logs [`run`] wrote in this process, in order.
static WRITTEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The logs written by the runs of this `cargo xtask` invocation.
pub fn logs_written() -> Vec<PathBuf> {
    WRITTEN.lock().map(|w| w.clone()).unwrap_or_default()
}

/// Saves a run's output as `target/qemu-logs/<image>.log`.
fn save_log(image: &Image, lines: &[String]) -> Result<(), Fail> {
    let dir = log_dir();
    let path = dir.join(format!("{}.log", image.name));
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|e| Fail(format!("cannot save {}: {e}", path.display())))?;
    if let Ok(mut w) = WRITTEN.lock() {
        w.retain(|p| p != &path);
        w.push(path);
    }
    Ok(())
}

/// Builds and runs `image` with `extra` QEMU arguments, echoing its output and saving it
/// to `target/qemu-logs/<image>.log`.
pub fn run(image: &Image, extra: &[String]) -> Result<Summary, Fail> {
    let mut argv = (image.build)()?;
    argv.extend(extra.iter().cloned());
    println!("==> {}: {}", image.name, argv.join(" "));
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Fail(format!("cannot start {}: {e}", argv[0])))?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| Fail(e.to_string()))? {
            break Some(status);
        }
        if start.elapsed() > image.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    let lines: Vec<String> = rx.try_iter().collect();
    save_log(image, &lines)?;
    let mut summary = Summary::default();
    for line in &lines {
        summary.read_line(line);
    }
    let Some(status) = status else {
        return Err(Fail(format!(
            "{} did not finish within {:?} (timeout = failure)",
            image.name, image.timeout
        )));
    };
    summary
        .verdict()
        .map_err(|why| Fail(format!("{}: {why}", image.name)))?;
    if status.code() != Some(image.success_status) {
        return Err(Fail(format!(
            "{}: QEMU exited with {status}, success is {}",
            image.name, image.success_status
        )));
    }
    println!(
        "==> {}: {} passed in {:.1} s",
        image.name,
        summary.passed.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// Builds a bare-metal crate under `images/` for `target`; returns the ELF's path.
pub fn build_bare_metal(dir: &str, bin: &str, target: &str) -> Result<PathBuf, Fail> {
    let manifest = root().join("images").join(dir).join("Cargo.toml");
    util::run(
        Command::new("cargo")
            .current_dir(root().join("images").join(dir))
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                target,
                "--manifest-path",
            ])
            .arg(&manifest),
    )?;
    Ok(root()
        .join("images")
        .join(dir)
        .join("target")
        .join(target)
        .join("release")
        .join(bin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(lines: &str) -> Summary {
        let mut s = Summary::default();
        lines.lines().for_each(|l| s.read_line(l));
        s
    }

    #[test]
    fn clean_runs_pass_and_anything_else_fails() {
        assert_eq!(
            summary("boot\nPASS a\nPASS b\n2 passed, 0 failed\n").verdict(),
            Ok(())
        );
        assert!(summary("PASS a\nFAIL b: no fault\n1 passed, 1 failed")
            .verdict()
            .is_err());
        assert!(summary("PASS a\n").verdict().is_err(), "no closing line");
        assert!(
            summary("0 passed, 0 failed").verdict().is_err(),
            "nothing ran"
        );
        assert!(
            summary("PASS a\n2 passed, 0 failed").verdict().is_err(),
            "count mismatch"
        );
        assert!(summary("PASS a\n1 passed, 1 failed").verdict().is_err());
        assert_eq!(parse_closing("12 passed, 3 failed"), Some((12, 3)));
        assert_eq!(parse_closing("passed, failed"), None);
    }
}
