//! Model agreement: the fault records the project's IOMMU models write must be the ones
//! QEMU's IOMMUs write for the same scenarios.
//!
//! The QEMU images print `RECORD <iommu> <scenario> <record>` for every fault record
//! they drain (the driver's canonical one-line form of it); iommu-models' `agreement`
//! binary runs the same scenarios against the models and prints the same kind of lines.
//! For every `<iommu>` named in the saved QEMU logs, the binary is run with that name
//! and, scenario by scenario, the multisets of records must be equal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::images;
use crate::util::{root, Fail};

/// `(iommu, scenario)` → the records, as printed.
type Records = BTreeMap<(String, String), Vec<String>>;

/// The `RECORD` lines of `text`.
fn parse(text: &str, into: &mut Records) {
    for line in text.lines() {
        // The seL4 kernel's console ends lines with "\n\r": a carriage return may lead.
        let line = line.trim_matches(['\r', '\n']);
        let Some(rest) = line.strip_prefix("RECORD ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(iommu), Some(scenario), Some(record)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        into.entry((iommu.to_string(), scenario.to_string()))
            .or_default()
            .push(record.trim().to_string());
    }
}

/// Each distinct record with its count.
fn counted(records: &[String]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.as_str()).or_insert(0) += 1;
    }
    m
}

fn show(side: &str, records: &[String]) -> String {
    let mut s = format!("    {side}: {} record(s)\n", records.len());
    for (r, n) in counted(records) {
        s += &format!("      {n:>3} x {r}\n");
    }
    s
}

/// Compares the records of `iommu`; returns a report of every scenario that differs.
fn compare(iommu: &str, qemu: &Records, model: &Records) -> Vec<String> {
    let scenarios: BTreeSet<&String> = qemu
        .keys()
        .chain(model.keys())
        .filter(|(i, _)| i == iommu)
        .map(|(_, s)| s)
        .collect();
    let empty = Vec::new();
    let mut diffs = Vec::new();
    for s in scenarios {
        let key = (iommu.to_string(), s.clone());
        let q = qemu.get(&key).unwrap_or(&empty);
        let m = model.get(&key).unwrap_or(&empty);
        let (cq, cm) = (counted(q), counted(m));
        if cq != cm {
            let mut only = String::new();
            let distinct: BTreeSet<&str> = cq.keys().chain(cm.keys()).copied().collect();
            for r in distinct {
                let (a, b) = (cq.get(r).unwrap_or(&0), cm.get(r).unwrap_or(&0));
                if a != b {
                    only += &format!("      QEMU {a:>3}, model {b:>3}: {r}\n");
                }
            }
            diffs.push(format!(
                "  {iommu} {s}: the records differ\n    where the counts differ:\n{only}{}{}",
                show("QEMU ", q),
                show("model", m)
            ));
        }
    }
    diffs
}

/// Runs the agreement binary for `iommu`; returns its output.
fn run_models(iommu: &str) -> Result<String, Fail> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "iommu-models",
            "--bin",
            "agreement",
            "--",
            iommu,
        ])
        .output()
        .map_err(|e| Fail(format!("cannot run the agreement binary: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Fail(format!(
            "the agreement binary for {iommu} failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(text)
}

/// Compares the records of the QEMU logs `logs` with the models'.
pub fn check(logs: &[PathBuf]) -> Result<(), Fail> {
    let mut qemu = Records::new();
    for log in logs {
        let text = std::fs::read_to_string(log)
            .map_err(|e| Fail(format!("cannot read {}: {e}", log.display())))?;
        parse(&text, &mut qemu);
    }
    let iommus: BTreeSet<String> = qemu.keys().map(|(i, _)| i.clone()).collect();
    if iommus.is_empty() {
        return Err(Fail(format!(
            "no RECORD lines in {}",
            if logs.is_empty() {
                String::from("any QEMU log (run `cargo xtask qemu <image>` first)")
            } else {
                logs.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    let mut diffs = Vec::new();
    for iommu in &iommus {
        let mut model = Records::new();
        parse(&run_models(iommu)?, &mut model);
        let found = compare(iommu, &qemu, &model);
        let scenarios = qemu.keys().filter(|(i, _)| i == iommu).count();
        let records: usize = qemu
            .iter()
            .filter(|((i, _), _)| i == iommu)
            .map(|(_, r)| r.len())
            .sum();
        if found.is_empty() {
            println!("{iommu}: the model agrees with QEMU on {records} record(s) in {scenarios} scenario(s)");
        }
        diffs.extend(found);
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        println!("{}", diffs.join(""));
        Err(Fail(format!(
            "{} scenario(s) where the models' records differ from QEMU's",
            diffs.len()
        )))
    }
}

/// Every log in `target/qemu-logs`.
pub fn saved_logs() -> Vec<PathBuf> {
    saved_logs_in(&images::log_dir())
}

fn saved_logs_in(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Records {
        let mut r = Records::new();
        parse(text, &mut r);
        r
    }

    #[test]
    fn records_are_grouped_by_iommu_and_scenario() {
        let r = records(
            "boot\nRECORD smmuv3 a type=0x10 sid=0x10\r\nPASS a\n\rRECORD smmuv3 a type=0x10 sid=0x10\n\
             RECORD vtd-legacy a source=00:02.0\nRECORD broken\nRECORD smmuv3 b type=0x4 sid=0x8\n",
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r[&("smmuv3".into(), "a".into())].len(), 2);
        assert_eq!(
            r[&("vtd-legacy".into(), "a".into())],
            ["source=00:02.0".to_string()]
        );
    }

    #[test]
    fn order_does_not_matter_but_counts_and_fields_do() {
        let q = records("RECORD x s r1\nRECORD x s r2\nRECORD x s r1\nRECORD x t r3\n");
        let same = records("RECORD x s r2\nRECORD x s r1\nRECORD x s r1\nRECORD x t r3\n");
        assert!(compare("x", &q, &same).is_empty());
        let fewer = records("RECORD x s r2\nRECORD x s r1\nRECORD x t r3\n");
        assert_eq!(compare("x", &q, &fewer).len(), 1);
        let other = records("RECORD x s r1\nRECORD x s r2\nRECORD x s r1\nRECORD x t r4\n");
        let d = compare("x", &q, &other);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("x t") && d[0].contains("r3") && d[0].contains("r4"));
        // A scenario only one side has differs; other IOMMUs are not looked at.
        let extra = records("RECORD x s r1\nRECORD x s r2\nRECORD x s r1\nRECORD x t r3\nRECORD x u r5\nRECORD y s q\n");
        assert_eq!(compare("x", &q, &extra).len(), 1);
        assert!(compare("z", &q, &extra).is_empty());
    }

    #[test]
    fn saved_logs_are_the_log_files() {
        let dir = std::env::temp_dir().join(format!("xtask-agreement-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.log"), "x").unwrap();
        std::fs::write(dir.join("a.log"), "x").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let logs = saved_logs_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(logs, [dir.join("a.log"), dir.join("b.log")]);
        assert!(saved_logs_in(&dir).is_empty());
    }
}
