//! `cargo run -p iommu-models --bin agreement -- <iommu>`: runs the scenarios that the
//! QEMU image of `<iommu>` runs, with the same stream IDs, IOVAs, access directions and
//! mapping state, through the project's real driver against the project's model of that
//! IOMMU, and prints every fault record drained as
//! `RECORD <iommu> <scenario> <record>` in the driver's canonical form, as the image
//! does under QEMU. `cargo xtask test` ("model agreement") compares the two sets of
//! lines per scenario; `cargo xtask agreement` does so for the QEMU logs already saved.
//!
//! Each scenario also prints `PASS <name>` or `FAIL <name>: <reason>` for its own data
//! checks, and the run ends with `<N> passed, <M> failed`; the exit status is non-zero
//! when a scenario failed or `<iommu>` is unknown.

use std::fmt::Display;
use std::process::ExitCode;

// The scenario lists and the device they share live next to this file, one module
// per IOMMU (`agreement/<iommu>.rs`).
#[path = "agreement/edu.rs"]
mod edu;
#[path = "agreement/smmuv3.rs"]
mod smmuv3;

/// A scenario as the image names it.
pub struct Scenario {
    /// Name printed after `PASS`/`FAIL` and in `RECORD` lines (the image's name).
    pub name: &'static str,
    /// Runs it; `Err` carries the reason of a failed check.
    pub run: fn(&Recorder) -> Result<(), String>,
}

/// Prints the `RECORD` lines of one scenario.
pub struct Recorder {
    iommu: &'static str,
    scenario: &'static str,
}

impl Recorder {
    /// Prints `RECORD <iommu> <scenario> <record>`.
    pub fn record(&self, record: impl Display) {
        println!("RECORD {} {} {record}", self.iommu, self.scenario);
    }
}

/// Every IOMMU with a scenario list: the name used in `RECORD` lines and on the command
/// line, and its scenarios.
fn lists() -> Vec<(&'static str, &'static [Scenario])> {
    vec![("smmuv3", smmuv3::SCENARIOS)]
}

/// The VT-d lists (`vtd-legacy`, `vtd-scalable`) run as one machine per mode, scenario
/// after scenario ([`iommu_models::vtd::agreement::run`]); a scenario whose own steps
/// failed prints `RECORD <iommu> <scenario> error=<what>` there, counted as a failure here.
fn run_vtd(mode: iommu_models::vtd::agreement::Mode) -> ExitCode {
    let mut failed = Vec::new();
    iommu_models::vtd::agreement::run(mode, &mut |line| {
        if let Some((head, why)) = line.split_once(" error=") {
            failed.push(format!("{head}: {why}"));
        }
        println!("{line}");
    });
    let scenarios = iommu_models::vtd::agreement::SCENARIOS.len();
    for f in &failed {
        println!("FAIL {f}");
    }
    println!(
        "{} passed, {} failed",
        scenarios.saturating_sub(failed.len()),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let mut names: Vec<&str> = lists().iter().map(|(n, _)| *n).collect();
    let arg = std::env::args().nth(1);
    for mode in iommu_models::vtd::agreement::Mode::ALL {
        if arg.as_deref() == Some(mode.name()) {
            return run_vtd(mode);
        }
        names.push(mode.name());
    }
    let Some((iommu, scenarios)) = lists()
        .into_iter()
        .find(|(n, _)| Some(*n) == arg.as_deref())
    else {
        eprintln!("usage: agreement <iommu>; iommus: {}", names.join(", "));
        return ExitCode::from(2);
    };
    let (mut passed, mut failed) = (0, 0);
    for s in scenarios {
        println!("--- {}", s.name);
        let rec = Recorder {
            iommu,
            scenario: s.name,
        };
        match (s.run)(&rec) {
            Ok(()) => {
                passed += 1;
                println!("PASS {}", s.name);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why}", s.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
