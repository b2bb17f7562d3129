//! The cgroup v2 lane: this host's memory controller is on cgroup v1, so the
//! OOM story on cgroup v2 is proven in a VM: Debian's 6.1 kernel booted with
//! `cgroup_no_v1=all` under qemu (TCG), containerd 1.7 or 2.x, runc, and the
//! shim under test (`hack/v2/setup.sh`, `hack/v2/run.sh`,
//! `hack/v2/guest-test.sh`). One VM per containerd version runs every
//! scenario under the stock shim (`runc`) and oomguard; each test below reads
//! that VM's `OOMGUARD-RESULT` lines.
//!
//! A third VM boots the same kernel with its memory controller on cgroup v1,
//! mounted the way this host has it (hybrid), for what cannot be provoked
//! on a shared host: a global (VM-wide) OOM kill of a container process
//! that is not its init, which on v1 fires no memcg notification.
//!
//! Environment:
//! - `OOMGUARD_SHIM_DIR`: where `containerd-shim-oomguard-v2` is (default
//!   `target/debug`).
//! - `OOMGUARD_V2_REPEAT` (default 3): how many times the init OOM repeats
//!   per runtime.
//! - `OOMGUARD_V2_SOAK=N` (e.g. 200): the soak; the init OOM repeats N times,
//!   `OOMGUARD_V2_SOAK_PAR` (default 4) at once.
//! - `OOMGUARD_V1_GLOBAL_REPEAT` (default 1): how many times the cgroup v1
//!   VM runs the global OOM (each takes ~30 s under TCG).
//! - `OOMGUARD_V2_PARALLEL=1`: boot both containerd versions' VMs at once
//!   (default: one after the other, so the VMs' timing does not depend on the
//!   test threads).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use oomguard_integration::harness::repo;

macro_rules! on_each_containerd {
    ($($test:ident),* $(,)?) => {
        mod containerd_1_7 { $( #[test] fn $test() { super::$test("1.7") } )* }
        mod containerd_2 { $( #[test] fn $test() { super::$test("2") } )* }
    };
}

/// The cgroup v1 VM (containerd 1.7).
mod cgroup_v1 {
    #[test]
    fn lane_completed() {
        super::v1_lane_completed()
    }
    #[test]
    fn init_oom() {
        super::init_oom(super::V1)
    }
    #[test]
    fn clean_exit() {
        super::clean_exit(super::V1)
    }
    #[test]
    fn user_sigkill_is_not_oom() {
        super::user_sigkill_is_not_oom(super::V1)
    }
    #[test]
    fn global_oom_of_a_child_is_reported_live() {
        super::global_oom_of_a_child_is_reported_live(super::V1)
    }
}

/// The lane key of the cgroup v1 VM.
const V1: &str = "v1";
/// The scenarios the cgroup v1 VM runs (the v1 memcg OOM matrix runs on this
/// host itself: tests/oom_runc.rs).
const V1_SCENARIOS: &str = "init-oom,clean-exit,kill-9,global-oom";
/// How long the global-oom container sleeps after its dd was killed
/// (guest-test.sh's GLOBAL_SLEEP): a run much shorter than that was ended
/// by a live TaskOOM.
const GLOBAL_SLEEP_SECS: f64 = 300.0;

on_each_containerd!(
    lane_completed,
    global_oom_of_a_child_is_reported_live,
    lane_really_ooms,
    init_oom,
    child_oom_exit_0_with_oom_group_on,
    child_oom_exit_0_with_oom_group_off,
    kernel_memory_oom_group_on,
    kernel_memory_oom_group_off_in_the_spec,
    limit_on_parent_cgroup_only,
    user_sigkill_is_not_oom,
    sigterm_to_an_exec,
    clean_exit,
    twenty_ooming_at_once,
    rm_with_the_cgroup_gone,
    repeated_init_oom,
    memory_warning_on_v2,
);

const OOMGUARD: &str = "oomguard";
const STOCK: &str = "runc";

/// One `OOMGUARD-RESULT` line.
#[derive(Debug, Clone)]
struct Res {
    scenario: String,
    runtime: String,
    exit: i64,
    events: Vec<String>,
    oom_kill: Option<u64>,
    id: String,
    /// every /tasks/exit: (exec id or container id, exit status)
    exits: Vec<(String, u64)>,
    /// How long `ctr run` took, where the lane timed it.
    secs: Option<f64>,
    line: String,
}

impl Res {
    fn parse(line: &str) -> Result<Res, String> {
        let mut words = line.split_whitespace();
        let bad = || format!("malformed result line: {line}");
        if words.next() != Some("OOMGUARD-RESULT") {
            return Err(bad());
        }
        let scenario = words.next().ok_or_else(bad)?.to_string();
        let runtime = words.next().ok_or_else(bad)?.to_string();
        let mut kv = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(bad)?;
            kv.insert(k, v);
        }
        let get = |k: &str| kv.get(k).copied().ok_or_else(bad);
        let list = |v: &str| -> Vec<String> {
            if v == "-" {
                vec![]
            } else {
                v.split(',').map(str::to_string).collect()
            }
        };
        let exits = list(get("exits")?)
            .into_iter()
            .map(|e| {
                let (p, s) = e.rsplit_once(':').ok_or_else(bad)?;
                Ok((p.to_string(), s.parse::<u64>().map_err(|_| bad())?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Res {
            scenario,
            runtime,
            exit: get("exit")?.parse().map_err(|_| bad())?,
            events: list(get("events")?),
            oom_kill: get("oom_kill")?.parse().ok(),
            id: get("id")?.to_string(),
            exits,
            secs: kv.get("secs").and_then(|v| v.parse().ok()),
            line: line.to_string(),
        })
    }

    fn count(&self, topic: &str) -> usize {
        self.events.iter().filter(|t| *t == topic).count()
    }

    /// The init's /tasks/exit: its index in `events` and its status.
    fn init_exit(&self) -> Option<(usize, u64)> {
        let status = self
            .exits
            .iter()
            .find(|(p, _)| *p == self.id)
            .map(|(_, s)| *s)?;
        // The init's exit is the last /tasks/exit (exec exits come first).
        let at = self.events.iter().rposition(|t| t == "/tasks/exit")?;
        Some((at, status))
    }

    /// The OOM story: TaskOOM (exactly one) before the init's TaskExit, or
    /// none; the init's exit status; ctr's exit code.
    fn story(&self, expect_oom: bool, init_status: u64, ctr_exit: i64) -> Result<(), String> {
        let mut why = vec![];
        let oom_at = self.events.iter().position(|t| t == "/tasks/oom");
        match self.init_exit() {
            None => why.push("no /tasks/exit of the init".to_string()),
            Some((exit_at, status)) => {
                if status != init_status {
                    why.push(format!("init exit_status {status}, expected {init_status}"));
                }
                match (expect_oom, oom_at) {
                    (true, None) => why.push("no /tasks/oom".into()),
                    (true, Some(o)) if o > exit_at => {
                        why.push("/tasks/oom after the init's /tasks/exit".into())
                    }
                    (false, Some(_)) => why.push("unexpected /tasks/oom".into()),
                    _ => {}
                }
            }
        }
        if expect_oom && self.count("/tasks/oom") > 1 {
            why.push(format!("{} /tasks/oom events", self.count("/tasks/oom")));
        }
        if self.exit != ctr_exit {
            why.push(format!("ctr exit {}, expected {ctr_exit}", self.exit));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}\n    {}",
                self.id,
                why.join("; "),
                self.line
            ))
        }
    }
}

struct Lane {
    version: String,
    results: Vec<Res>,
    console: String,
    console_path: PathBuf,
    repeat: usize,
    secs: f64,
}

impl Lane {
    /// The VM's own (global) OOM kills were those of the global-oom
    /// scenario, no more: the VM never ran out of memory otherwise.
    fn assert_global_kills(&self, want: usize) {
        let kmsg = self
            .console
            .lines()
            .find(|x| x.starts_with("OOMGUARD-KMSG "))
            .unwrap_or_else(|| panic!("no OOMGUARD-KMSG line ({})", self.console_path.display()));
        assert!(
            kmsg.contains(&format!("global_kills={want} ")),
            "{}: {want} global OOM kill(s) expected (the global-oom scenario): {kmsg}",
            self.version
        );
    }

    fn of(&self, scenario: &str, runtime: &str) -> Vec<&Res> {
        self.results
            .iter()
            .filter(|r| r.scenario == scenario && r.runtime == runtime)
            .collect()
    }

    fn one(&self, scenario: &str, runtime: &str) -> &Res {
        let rs = self.of(scenario, runtime);
        assert_eq!(
            rs.len(),
            1,
            "containerd {}: {} results for {scenario}/{runtime} (console: {})",
            self.version,
            rs.len(),
            self.console_path.display()
        );
        rs[0]
    }

    /// Panics with every failure of `check` over the scenario's results.
    fn check_all(
        &self,
        scenario: &str,
        runtime: &str,
        want: usize,
        check: impl Fn(&Res) -> Result<(), String>,
    ) {
        let rs = self.of(scenario, runtime);
        assert_eq!(
            rs.len(),
            want,
            "containerd {}: {} results for {scenario}/{runtime}, expected {want} (console: {})",
            self.version,
            rs.len(),
            self.console_path.display()
        );
        let failures: Vec<String> = rs.iter().filter_map(|r| check(r).err()).collect();
        assert!(
            failures.is_empty(),
            "containerd {}: {scenario}/{runtime}: {} of {} failed:\n{}\n(the stock shim, for comparison: {})\n(console: {})",
            self.version,
            failures.len(),
            rs.len(),
            failures.join("\n"),
            self.summary(scenario, STOCK),
            self.console_path.display()
        );
    }

    fn check(&self, scenario: &str, runtime: &str, check: impl Fn(&Res) -> Result<(), String>) {
        self.one(scenario, runtime);
        self.check_all(scenario, runtime, 1, check);
    }

    /// "exit=137 create,start,oom,exit,delete" per distinct outcome, with counts.
    fn summary(&self, scenario: &str, runtime: &str) -> String {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.of(scenario, runtime) {
            let ev: Vec<&str> = r
                .events
                .iter()
                .map(|t| t.trim_start_matches("/tasks/"))
                .collect();
            *seen
                .entry(format!(
                    "exit={} oom_kill={} {}",
                    r.exit,
                    r.oom_kill.map_or("-".into(), |k| k.to_string()),
                    ev.join(",")
                ))
                .or_default() += 1;
        }
        if seen.is_empty() {
            return "(none)".into();
        }
        seen.into_iter()
            .map(|(k, n)| format!("{n}x {k}"))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// How many global OOMs a lane's VM runs.
fn global_repeat(lane: &str) -> usize {
    match lane {
        V1 => env_usize("OOMGUARD_V1_GLOBAL_REPEAT").unwrap_or(1).max(1),
        _ => 1,
    }
}

fn env_usize(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
    )
}

static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
static VM: Mutex<()> = Mutex::new(());
static LANE_1_7: OnceLock<Result<Lane, String>> = OnceLock::new();
static LANE_2: OnceLock<Result<Lane, String>> = OnceLock::new();
static LANE_V1: OnceLock<Result<Lane, String>> = OnceLock::new();

/// The lane of a containerd version ("1.7", "2"), or of the cgroup v1 VM
/// (`V1`).
fn lane(version: &str) -> &'static Lane {
    let cell = match version {
        "1.7" => &LANE_1_7,
        "2" => &LANE_2,
        V1 => &LANE_V1,
        v => panic!("no cgroup v2 lane for containerd {v}"),
    };
    match cell.get_or_init(|| boot(version)) {
        Ok(l) => l,
        Err(e) => panic!("the cgroup v2 lane for containerd {version} did not complete:\n{e}"),
    }
}

fn boot(version: &str) -> Result<Lane, String> {
    SETUP
        .get_or_init(|| {
            let out = Command::new(repo().join("hack/v2/setup.sh"))
                .output()
                .map_err(|e| format!("cannot run hack/v2/setup.sh: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "hack/v2/setup.sh failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()?;
    let _serial = if std::env::var_os("OOMGUARD_V2_PARALLEL").is_some() {
        None
    } else {
        Some(VM.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let (repeat, par) = match env_usize("OOMGUARD_V2_SOAK") {
        Some(n) => (n, env_usize("OOMGUARD_V2_SOAK_PAR").unwrap_or(4)),
        None => (env_usize("OOMGUARD_V2_REPEAT").unwrap_or(3), 1),
    };
    let global_repeat = global_repeat(version).to_string();
    let (key, version, extra): (&str, &str, Vec<&str>) = if version == V1 {
        (
            "v1-1.7",
            "1.7",
            vec!["--cgroup", "v1", "--scenarios", V1_SCENARIOS],
        )
    } else {
        (version, version, vec![])
    };
    let work = PathBuf::from(format!(
        "/tmp/oomguard-it/v2-{}-{}",
        key,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let started = Instant::now();
    let out = Command::new(repo().join("hack/v2/run.sh"))
        .args(["--containerd", version])
        .args(["--repeat", &repeat.to_string()])
        .args(["--repeat-par", &par.to_string()])
        .args(["--global-repeat", &global_repeat])
        .args(&extra)
        .arg(&work)
        .output()
        .map_err(|e| format!("cannot run hack/v2/run.sh: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let console_path = work.join("console.log");
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    if !out.status.success() {
        return Err(format!(
            "hack/v2/run.sh --containerd {version} failed ({}) after {secs:.0}s:\n{}\n--- last console lines ({}):\n{}",
            out.status,
            stderr.trim(),
            console_path.display(),
            tail(if console.is_empty() { &stdout } else { &console })
        ));
    }
    // run.sh checked completeness; check again here, independently.
    if !console.lines().any(|l| l.starts_with("OOMGUARD-BOOT ")) {
        return Err(format!(
            "no OOMGUARD-BOOT line: the VM did not boot ({})",
            console_path.display()
        ));
    }
    let mut results = vec![];
    for l in console
        .lines()
        .filter(|l| l.starts_with("OOMGUARD-RESULT "))
    {
        results.push(Res::parse(l)?);
    }
    let done: Option<usize> = console
        .lines()
        .filter_map(|l| l.strip_prefix("OOMGUARD-DONE "))
        .next_back()
        .and_then(|n| n.trim().parse().ok());
    let plan: Option<usize> = console
        .lines()
        .filter_map(|l| l.strip_prefix("OOMGUARD-PLAN "))
        .next_back()
        .and_then(|n| n.trim().parse().ok());
    if done != Some(results.len()) || plan != Some(results.len()) {
        return Err(format!(
            "result count mismatch: OOMGUARD-PLAN {plan:?}, OOMGUARD-DONE {done:?}, {} OOMGUARD-RESULT lines ({})",
            results.len(),
            console_path.display()
        ));
    }
    eprintln!(
        "cgroup lane {key}, containerd {version}: {} results in {secs:.0}s (console: {})",
        results.len(),
        console_path.display()
    );
    Ok(Lane {
        version: key.to_string(),
        results,
        console,
        console_path,
        repeat,
        secs,
    })
}

// ---------------------------------------------------------------- the lane itself

/// Every scenario came back under both runtimes (the oomguard TOML one under
/// oomguard only), and the VM itself never ran out of memory.
fn lane_completed(version: &str) {
    let l = lane(version);
    let mut missing = vec![];
    let mut want = vec![
        ("init-oom", 1),
        ("child-oom-group-on", 1),
        ("kgroup-on", 1),
        ("kgroup-off", 1),
        ("parent-limit", 1),
        ("clean-exit", 1),
        ("kill-9", 1),
        ("exec-sigterm", 1),
        ("twenty", 20),
        ("rm-gone", 1),
        ("repeat", l.repeat),
    ]
    .into_iter()
    .flat_map(|(s, n)| [(s, STOCK, n), (s, OOMGUARD, n)])
    .collect::<Vec<_>>();
    want.push(("child-oom-group-off", OOMGUARD, 1));
    want.push(("global-oom", OOMGUARD, 1));
    want.push(("warning-high", OOMGUARD, 1));
    want.push(("warning-calm", OOMGUARD, 1));
    for (s, rt, n) in &want {
        let got = l.of(s, rt).len();
        if got != *n {
            missing.push(format!("{s}/{rt}: {got} results, expected {n}"));
        }
    }
    assert!(
        missing.is_empty(),
        "containerd {version}: {}\n(console: {})",
        missing.join("\n"),
        l.console_path.display()
    );
    l.assert_global_kills(1);
    // The comparison, for the test log (cargo test -- --nocapture).
    let mut table = format!(
        "containerd {version}, {:.0}s, stock shim vs oomguard:\n",
        l.secs
    );
    let mut scenarios: Vec<&str> = l.results.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    for s in scenarios {
        for rt in [STOCK, OOMGUARD] {
            if !l.of(s, rt).is_empty() {
                table += &format!("  {s:<20} {rt:<9} {}\n", l.summary(s, rt));
            }
        }
    }
    eprintln!("{table}");
}

/// The memory warning on cgroup v2: a container throttled at its parent's
/// memory.high (memory stall, the PSI trigger) is warned exactly once, and
/// exits 0; a calm one never.
fn memory_warning_on_v2(version: &str) {
    let l = lane(version);
    let warnings = |s: &str| -> Option<usize> {
        l.console
            .lines()
            .find_map(|line| line.strip_prefix(&format!("OOMGUARD-WARNINGS {s} {OOMGUARD} ")))
            .and_then(|n| n.trim().parse().ok())
    };
    let high = l.one("warning-high", OOMGUARD);
    assert_eq!(high.exit, 0, "{}", high.line);
    assert_eq!(
        warnings("warning-high"),
        Some(1),
        "containerd {version} (console: {})",
        l.console_path.display()
    );
    assert_eq!(l.one("warning-calm", OOMGUARD).exit, 0);
    assert_eq!(warnings("warning-calm"), Some(0));
}

/// The scenarios really OOM, whatever a shim says: under the stock shim (so
/// that a broken oomguard fails its own tests, not this one), the kernel's
/// oom_kill counter (memory.events of the container's parent cgroup) moved
/// for every container that should have been OOM-killed, and did not move
/// for those that should not.
fn lane_really_ooms(version: &str) {
    let l = lane(version);
    let mut wrong = vec![];
    for r in l.results.iter().filter(|r| r.runtime == STOCK) {
        let should = !matches!(
            r.scenario.as_str(),
            "clean-exit" | "kill-9" | "exec-sigterm"
        );
        let ok = match r.oom_kill {
            Some(k) => (k > 0) == should,
            None => false,
        };
        if !ok {
            wrong.push(format!(
                "{} (oom_kill expected {}): {}",
                r.id,
                if should { ">0" } else { "0" },
                r.line
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "containerd {version}: the kernel counters disagree with the scenario:\n{}",
        wrong.join("\n")
    );
    // And the stock shim does see the plain init OOM (the lane's events work).
    let stock = l.one("init-oom", STOCK);
    assert_eq!(stock.exit, 137, "{}", stock.line);
}

/// The cgroup v1 VM came back with every scenario, and its kernel OOM-killed
/// what the scenarios asked for: the memcg OOMs, and one global kill.
fn v1_lane_completed() {
    let l = lane(V1);
    let mut missing = vec![];
    for (s, runtimes) in [
        ("init-oom", &[STOCK, OOMGUARD][..]),
        ("clean-exit", &[STOCK, OOMGUARD]),
        ("kill-9", &[STOCK, OOMGUARD]),
        ("global-oom", &[OOMGUARD]),
    ] {
        let want = if s == "global-oom" {
            global_repeat(V1)
        } else {
            1
        };
        for rt in runtimes {
            let got = l.of(s, rt).len();
            if got != want {
                missing.push(format!("{s}/{rt}: {got} results, expected {want}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "cgroup v1: {}\n(console: {})",
        missing.join("\n"),
        l.console_path.display()
    );
    assert!(
        l.console.contains("controllers=\"v1: "),
        "the VM did not mount cgroup v1 ({})",
        l.console_path.display()
    );
    l.assert_global_kills(global_repeat(V1));
    // The stock shim's init OOM is the kernel's memcg kill (v1 counters are
    // not hierarchical, so the kernel log says it).
    let stock = l.one("init-oom", STOCK);
    assert_eq!(stock.exit, 137, "{}", stock.line);
    eprintln!(
        "cgroup v1, {:.0}s: {}",
        l.secs,
        ["init-oom", "clean-exit", "kill-9", "global-oom"]
            .iter()
            .flat_map(|s| [STOCK, OOMGUARD].map(|rt| (s, rt)))
            .filter(|(s, rt)| !l.of(s, rt).is_empty())
            .map(|(s, rt)| format!("{s}/{rt}: {}", l.summary(s, rt)))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

// ---------------------------------------------------------------- oomguard

fn init_oom(version: &str) {
    lane(version).check("init-oom", OOMGUARD, |r| r.story(true, 137, 137));
}

/// `dd` is OOM-killed, the shell exits 0: oom_group (default on) makes it 137.
fn child_oom_exit_0_with_oom_group_on(version: &str) {
    lane(version).check("child-oom-group-on", OOMGUARD, |r| r.story(true, 137, 137));
}

/// `oom_group = false` in the shim's TOML (`--runtime-config-path`): TaskOOM,
/// and the init's own 0 stands.
fn child_oom_exit_0_with_oom_group_off(version: &str) {
    lane(version).check("child-oom-group-off", OOMGUARD, |r| r.story(true, 0, 0));
}

/// The spec's `linux.resources.unified["memory.oom.group"] = "1"`: the kernel
/// kills the whole cgroup.
fn kernel_memory_oom_group_on(version: &str) {
    lane(version).check("kgroup-on", OOMGUARD, |r| r.story(true, 137, 137));
}

/// The spec's `memory.oom.group = "0"` wins over the shim's default
/// (oom_group on): the shell's 0 stands, TaskOOM still comes.
fn kernel_memory_oom_group_off_in_the_spec(version: &str) {
    lane(version).check("kgroup-off", OOMGUARD, |r| r.story(true, 0, 0));
}

/// The limit is on a parent cgroup only (ctr run --cgroup /parent/child).
fn limit_on_parent_cgroup_only(version: &str) {
    lane(version).check("parent-limit", OOMGUARD, |r| r.story(true, 137, 137));
}

fn user_sigkill_is_not_oom(version: &str) {
    lane(version).check("kill-9", OOMGUARD, |r| r.story(false, 137, 137));
}

/// SIGTERM to an exec: the exec's 143, no TaskOOM (the init is then killed).
fn sigterm_to_an_exec(version: &str) {
    lane(version).check("exec-sigterm", OOMGUARD, |r| {
        r.story(false, 137, 143)?;
        if r.exits.iter().any(|(p, s)| p == "term" && *s == 143) {
            Ok(())
        } else {
            Err(format!("{}: no /tasks/exit term:143\n    {}", r.id, r.line))
        }
    });
}

fn clean_exit(version: &str) {
    lane(version).check("clean-exit", OOMGUARD, |r| r.story(false, 0, 0));
}

/// A global (VM-wide) OOM kill of a process that is not the container's
/// init (dd, the VM's largest process, in a container without a limit of
/// its own; the shell then sleeps): TaskOOM comes while the container runs
/// (oom_group then ends it, 137), long before the sleep would have ended
/// it. On cgroup v1 no memcg notification fires for a global OOM.
fn global_oom_of_a_child_is_reported_live(version: &str) {
    let want = global_repeat(version);
    lane(version).check_all("global-oom", OOMGUARD, want, |r| {
        r.story(true, 137, 137)?;
        match r.secs {
            // (dd takes tens of seconds to fill the VM's memory under TCG)
            Some(s) if s < GLOBAL_SLEEP_SECS - 60.0 => Ok(()),
            other => Err(format!(
                "{}: ctr run took {other:?} s: the TaskOOM was not live (the shell sleeps {GLOBAL_SLEEP_SECS} s after the kill)\n    {}",
                r.id, r.line
            )),
        }
    });
}

fn twenty_ooming_at_once(version: &str) {
    lane(version).check_all("twenty", OOMGUARD, 20, |r| r.story(true, 137, 137));
}

/// `ctr run --rm` with ctr's default cgroup: the memcg is gone right after
/// the exit; the TaskOOM must have been decided before.
fn rm_with_the_cgroup_gone(version: &str) {
    lane(version).check("rm-gone", OOMGUARD, |r| r.story(true, 137, 137));
}

/// The init OOM again and again (`OOMGUARD_V2_SOAK=200` for the soak):
/// every one gets its TaskOOM before its TaskExit.
fn repeated_init_oom(version: &str) {
    let l = lane(version);
    eprintln!(
        "containerd {version}, {} repeated init OOMs: stock {}; oomguard {}",
        l.repeat,
        l.summary("repeat", STOCK),
        l.summary("repeat", OOMGUARD)
    );
    l.check_all("repeat", OOMGUARD, l.repeat, |r| r.story(true, 137, 137));
}
