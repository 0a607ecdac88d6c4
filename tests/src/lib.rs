//! Whole-system scenarios and their runner.
//!
//! Each scenario is a named function that returns `Err(reason)` or panics to fail. The
//! runner prints `PASS <name>` or `FAIL <name>: <reason>` per scenario and a closing
//! `<N> passed, <M> failed` line, the convention every test image and runner here follows.

pub mod pasid;
pub mod simulated;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// A scenario's outcome: `Err` carries the reason it failed.
pub type Outcome = Result<(), String>;

/// A named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn() -> Outcome,
}

/// Fails with `reason` unless `cond` holds.
pub fn check(cond: bool, reason: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(reason())
    }
}

/// Runs every scenario whose name contains `filter`; returns (passed, failed).
pub fn run_all(scenarios: &[Scenario], filter: Option<&str>) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for s in scenarios
        .iter()
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
    {
        let outcome = catch_unwind(AssertUnwindSafe(s.run)).unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            Err(format!("panicked: {msg}"))
        });
        match outcome {
            Ok(()) => {
                println!("PASS {}", s.name);
                passed += 1;
            }
            Err(reason) => {
                // A seeded scenario reports `(seed <n>): <why>`: `FAIL <name> (seed <n>): <why>`.
                if reason.starts_with("(seed ") {
                    println!("FAIL {} {reason}", s.name);
                } else {
                    println!("FAIL {}: {reason}", s.name);
                }
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    (passed, failed)
}
