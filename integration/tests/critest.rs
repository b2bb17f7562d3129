//! Kubernetes conformance: cri-tools' `critest` (the CRI validation suite)
//! against a private containerd, the stock handler and oomguard's in the same
//! instance, one after the other. A lane fails unless oomguard passes every
//! spec the stock handler passed in that run, and unless the whole run left
//! nothing behind (no shim, mount, cgroup, runtime state or shim socket).
//!
//! Lanes: containerd 1.7 and 2.x with `runc` (stock `io.containerd.runc.v2`)
//! then `oomguard` (also: 0 failed); gVisor on containerd 1.7 with `runsc`
//! (the stock shim running runsc 20240729, ptrace) then `oomguard-runsc`.
//!
//! critest is not packaged by Debian: it is found at `$CRITEST`, else in
//! `../shared/critest/` beside the repository. Where there is none the lane
//! says so and is skipped (`make test` prints the same before the tests).

use std::fmt::Write as _;

use oomguard_integration::critest::{critest_path, regressions, Lane, Outcome, Run};
use oomguard_integration::harness::repo;

/// Runs each (stock, ours) pair in one containerd and checks the outcome.
fn lane(name: &str, version: &str, pairs: &[(&str, &str)], ours_must_not_fail: bool) {
    let Some(critest) = critest_path() else {
        eprintln!(
            "critest lane {name}: SKIPPED: no critest on this machine (set CRITEST, or put cri-tools' critest in ../shared/critest/)"
        );
        return;
    };
    let mut lane = Lane::start(version, critest);
    let mut report = format!("## critest lane {name} (containerd {version})\n\n");
    let mut problems = Vec::new();
    for (stock, ours) in pairs {
        let s = lane.run(stock);
        let o = lane.run(ours);
        let _ = writeln!(report, "- `{stock}`: {}", s.summary());
        let _ = writeln!(report, "- `{ours}`: {}", o.summary());
        for (spec, why) in regressions(&s, &o) {
            problems.push(format!(
                "{ours}: fails what {stock} passes: {spec}\n    {why}"
            ));
        }
        if ours_must_not_fail {
            for spec in o.with(Outcome::Failed) {
                let why = o.specs[spec].1.lines().next().unwrap_or_default();
                problems.push(format!("{ours}: failed: {spec}\n    {why}"));
            }
        }
        let stock_fails = failed_list(&s);
        if !stock_fails.is_empty() {
            let _ = writeln!(report, "\n`{stock}` fails:\n{stock_fails}");
        }
    }
    let left = lane.leftovers();
    lane.stop();
    let results = repo().join(format!(".cache/critest/results-{name}.md"));
    if let Err(e) = std::fs::write(&results, &report) {
        eprintln!(
            "critest lane {name}: cannot write {}: {e}",
            results.display()
        );
    }
    eprintln!("{report}");
    problems.extend(left.into_iter().map(|l| format!("left behind: {l}")));
    assert!(
        problems.is_empty(),
        "critest lane {name}:\n{}\n\n{report}",
        problems.join("\n")
    );
}

fn failed_list(run: &Run) -> String {
    run.with(Outcome::Failed)
        .into_iter()
        .map(|spec| {
            let why = run.specs[spec].1.lines().next().unwrap_or_default();
            format!("  - {spec}: {why}\n")
        })
        .collect()
}

#[test]
fn containerd_1_7_runc() {
    lane("1.7", "1.7", &[("runc", "oomguard")], true);
}

#[test]
fn containerd_2_runc() {
    lane("2", "2", &[("runc", "oomguard")], true);
}

#[test]
fn containerd_1_7_gvisor() {
    lane("gvisor", "1.7", &[("runsc", "oomguard-runsc")], false);
}
