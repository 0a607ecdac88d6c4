//! Small helpers for running commands.

use std::path::PathBuf;
use std::process::Command;

/// A failed step, with what to tell the user.
#[derive(Debug)]
pub struct Fail(pub String);

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command in the foreground; fails if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<(), Fail> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| Fail(format!("cannot run {shown}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Fail(format!("{shown} exited with {status}")))
    }
}

/// Runs cargo with `args` at the repository root.
pub fn cargo(args: &[&str]) -> Result<(), Fail> {
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(args),
    )
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Captures a command's standard output, if it runs and succeeds.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
