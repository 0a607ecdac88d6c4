//! Runs the whole-system scenarios: `scenarios [filter]`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = std::env::args().nth(1);
    // Failing scenarios report through their FAIL line; keep panic messages off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let (passed, failed) = system_tests::run_all(system_tests::pasid::SCENARIOS, filter.as_deref());
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
