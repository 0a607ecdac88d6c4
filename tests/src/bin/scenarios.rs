//! Runs the whole-system scenarios: `scenarios [filter]`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = std::env::args().nth(1);
    // Failing scenarios report through their FAIL line; keep panic messages off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let scenarios: Vec<system_tests::Scenario> = system_tests::pasid::SCENARIOS
        .iter()
        .chain(system_tests::simulated::SCENARIOS)
        .map(|s| system_tests::Scenario {
            name: s.name,
            run: s.run,
        })
        .collect();
    let (passed, failed) = system_tests::run_all(&scenarios, filter.as_deref());
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
