//! `cargo xtask`: the project's front door.
//!
//! ```text
//! cargo xtask setup                     install what the build and the tests need
//! cargo xtask test                      every test: lint, host tests, fuzz corpus, scenarios, QEMU images
//! cargo xtask demo                      the servers at work
//! cargo xtask bench                     benchmarks (figures printed)
//! cargo xtask capgraph [out.svg]        draw the default system's capabilities (SVG)
//! cargo xtask qemu <image> [-- args]    build an image and run it under QEMU
//! cargo xtask agreement                 compare the saved QEMU logs' fault records with the models'
//! cargo xtask fuzz [seconds]            run the protocol fuzzer (nightly + cargo-fuzz)
//! ```

mod agreement;
mod images;
mod sel4;
mod setup;
mod util;

use std::process::ExitCode;

use util::{cargo, root, Fail};

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n\
         commands:\n  \
           setup                   install rustup targets and QEMU (apt, when root)\n  \
           test                    run every test (lint, host, fuzz corpus, scenarios, QEMU images)\n  \
           demo                    show the servers at work\n  \
           bench                   run the benchmarks and print their figures\n  \
           capgraph [out.svg]      draw who holds what in the default system (target/capgraph.svg)\n  \
           qemu <image> [-- args]  build and boot an image; images: {}\n  \
           agreement               compare fault records in target/qemu-logs with the models'\n  \
           fuzz [seconds]          fuzz the protocol decoders (default 60 s)",
        images::names().join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "setup" => setup::setup(),
        "test" => test(),
        "demo" => demo(),
        "bench" => bench(),
        "capgraph" => capgraph(rest),
        "qemu" => qemu(rest),
        "agreement" => agreement::check(&agreement::saved_logs()),
        "fuzz" => fuzz(rest),
        "-h" | "--help" | "help" => return usage(),
        other => {
            eprintln!("xtask: unknown command `{other}`");
            return usage();
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// One step of `cargo xtask test`.
type Step = Box<dyn Fn() -> Result<(), Fail>>;

/// Every test of the project. Each step must pass; the first failure stops the run.
fn test() -> Result<(), Fail> {
    setup::setup()?;
    let mut steps: Vec<(&str, Step)> = vec![
        ("format", Box::new(|| cargo(&["fmt", "--all", "--check"]))),
        (
            "clippy",
            Box::new(|| {
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--quiet",
                    "--",
                    "-D",
                    "warnings",
                ])
            }),
        ),
        ("host tests", Box::new(|| cargo(&["test", "--workspace"]))),
        ("fuzz target", Box::new(fuzz_corpus)),
        ("sel4 bindings", Box::new(sel4_bindings)),
        (
            "scenarios",
            Box::new(|| {
                cargo(&[
                    "run",
                    "--quiet",
                    "--release",
                    "-p",
                    "system-tests",
                    "--bin",
                    "scenarios",
                ])
            }),
        ),
    ];
    for image in images::all() {
        let name = image.name;
        steps.push((
            name,
            Box::new(move || images::run(images::find(name).unwrap(), &[]).map(|_| ())),
        ));
    }
    // After the images: their fault records against the models'.
    steps.push((
        "model agreement",
        Box::new(|| agreement::check(&images::logs_written())),
    ));
    let total = steps.len();
    let mut passed = 0;
    for (name, step) in &steps {
        println!("==> xtask test: {name}");
        if let Err(Fail(msg)) = step() {
            println!("FAIL {name}: {msg}");
            println!("{passed} passed, {} failed", total - passed);
            return Err(Fail(format!("test step `{name}` failed")));
        }
        println!("PASS {name}");
        passed += 1;
    }
    println!("{passed} passed, 0 failed");
    Ok(())
}

/// Builds the fuzz target (as a plain binary; coverage instrumentation needs nightly and
/// is used by `cargo xtask fuzz`) and runs the committed corpus through it once.
fn fuzz_corpus() -> Result<(), Fail> {
    let manifest = root().join("ipc-protocol/fuzz/Cargo.toml");
    let manifest = manifest.to_str().unwrap();
    cargo(&[
        "build",
        "--quiet",
        "--manifest-path",
        manifest,
        "--bin",
        "decode",
    ])?;
    let bin = root().join("ipc-protocol/fuzz/target/debug/decode");
    let corpus = root().join("ipc-protocol/fuzz/corpus/decode");
    let count = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    if count == 0 {
        return Err(Fail(format!("no corpus in {}", corpus.display())));
    }
    println!("running {count} corpus inputs through the fuzz target");
    util::run(std::process::Command::new(bin).arg("-runs=0").arg(&corpus))
}

/// Builds the seL4 kernel (cached) and tests the bindings generated from its tree and
/// configuration, including a comparison with the kernel's own generated headers, then
/// the host-testable part of the image's programs (`sel4-rt`).
fn sel4_bindings() -> Result<(), Fail> {
    let kernel = sel4::build_kernel()?;
    let cargo_test = |dir: &str, extra: &[&str]| {
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(root().join(dir))
            .args(["test", "--quiet"])
            .args(extra);
        for (key, value) in kernel.bindings_env() {
            cmd.env(key, value);
        }
        util::run(&mut cmd)
    };
    cargo_test("sel4/sys", &[])?;
    let host = util::output(std::process::Command::new("rustc").arg("-vV"))
        .ok_or_else(|| Fail("rustc -vV failed".into()))?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or_else(|| Fail("rustc -vV names no host target".into()))?;
    cargo_test("sel4/apps", &["-p", "sel4-rt", "--target", &host])
}

fn demo() -> Result<(), Fail> {
    setup::setup()?;
    cargo(&[
        "run",
        "--quiet",
        "--release",
        "-p",
        "system-tests",
        "--bin",
        "demo",
    ])?;
    for image in images::all() {
        if image.demo {
            images::run(image, &[])?;
        }
    }
    Ok(())
}

/// Renders the default system description's capability graph with Graphviz `dot`
/// (installed from Debian when missing) to `out` (default `target/capgraph.svg`).
fn capgraph(rest: &[String]) -> Result<(), Fail> {
    use system_description::{default_system, dot, IommuKind};
    let out = match rest.first() {
        Some(p) => std::path::PathBuf::from(p),
        None => root().join("target").join("capgraph.svg"),
    };
    setup::graphviz()?;
    let desc = default_system(IommuKind::Smmuv3);
    desc.validate()
        .map_err(|e| Fail(format!("the default system description is invalid: {e}")))?;
    let source = dot::render(&desc);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .arg("-o")
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Fail(format!("cannot run dot: {e}")))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(source.as_bytes())
            .map_err(|e| Fail(format!("cannot feed dot: {e}")))?;
    }
    let status = child
        .wait()
        .map_err(|e| Fail(format!("dot did not finish: {e}")))?;
    if !status.success() {
        return Err(Fail(format!("dot exited with {status}")));
    }
    println!("{}", out.display());
    Ok(())
}

fn bench() -> Result<(), Fail> {
    // Only the benchmark targets (each prints its own table), not every crate's tests.
    cargo(&[
        "bench",
        "--workspace",
        "--quiet",
        "--bench",
        "pasid",
        "--bench",
        "pagetable",
        "--bench",
        "server-path",
    ])
}

fn qemu(rest: &[String]) -> Result<(), Fail> {
    let Some(name) = rest.first() else {
        return Err(Fail(format!(
            "qemu needs an image name; images: {}",
            images::names().join(", ")
        )));
    };
    let extra = match rest.get(1).map(String::as_str) {
        None => &rest[1..],
        Some("--") => &rest[2..],
        Some(other) => {
            return Err(Fail(format!(
                "unexpected `{other}`: extra QEMU arguments go after `--`"
            )))
        }
    };
    let image = images::find(name).ok_or_else(|| {
        Fail(format!(
            "no image `{name}`; images: {}",
            images::names().join(", ")
        ))
    })?;
    setup::setup()?;
    images::run(image, extra).map(|_| ())
}

fn fuzz(rest: &[String]) -> Result<(), Fail> {
    let seconds: u64 = match rest.first() {
        Some(s) => s
            .parse()
            .map_err(|_| Fail(format!("`{s}` is not a number of seconds")))?,
        None => 60,
    };
    setup::fuzz_tools()?;
    let dir = root().join("ipc-protocol/fuzz");
    util::run(std::process::Command::new("cargo").current_dir(&dir).args([
        "+nightly",
        "fuzz",
        "run",
        "decode",
        "--",
        &format!("-max_total_time={seconds}"),
    ]))
}
