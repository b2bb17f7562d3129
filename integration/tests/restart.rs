//! containerd goes away while containers run (SIGKILL: a crash; SIGTERM: an
//! upgrade or `systemctl restart`); the containers are OOM-killed (and one
//! exits cleanly) while it is down; it is started again on the same root and
//! state, and a subscriber listens. Every TaskOOM and TaskExit the shims
//! queued meanwhile reaches it, in order: TaskOOM then TaskExit(137) for
//! each OOM-killed container, TaskExit(0) for the clean one, an exec's exit
//! before its container's.
//!
//! The restart holds containerd's ttrpc socket back from the shims until the
//! new `ctr events` is subscribed (`hack/containerd.sh`,
//! OOMGUARD_HOLD_EVENTS): containerd keeps no event history, so an event
//! published before the subscriber is there would be missed by the test,
//! not by containerd. (The CRI test restarts on the very same paths: CRI
//! subscribes inside containerd before anything reaches it.)
//!
//! The stock `containerd-shim-runc-v2` runs beside oomguard in the runc
//! cases; what reached the subscriber from it is printed, not asserted.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use oomguard_integration::cri::{Cri, HANDLER, STOCK_HANDLER};
use oomguard_integration::gvisor::{own_rootfs, runsc_binary, runsc_config};
use oomguard_integration::harness::{
    assert_ok, assert_oom_story, memcg_oom_kills, rootfs, signal, wait_gone, Containerd, Events,
    RUNTIME, STOCK_RUNTIME,
};

macro_rules! outage_cases {
    ($($name:ident: $version:literal, $runtime:expr, $signal:literal, $secs:literal;)*) => {
        $( #[test] fn $name() { outage($version, $runtime, $signal, Duration::from_secs($secs)) } )*
    };
}

outage_cases! {
    runc_1_7_sigkill_5s: "1.7", Runtime::Runc, "KILL", 5;
    runc_1_7_sigterm_5s: "1.7", Runtime::Runc, "TERM", 5;
    runc_2_sigkill_5s: "2", Runtime::Runc, "KILL", 5;
    runc_2_sigterm_5s: "2", Runtime::Runc, "TERM", 5;
    runc_1_7_sigkill_60s: "1.7", Runtime::Runc, "KILL", 60;
    runsc_1_7_sigkill_5s: "1.7", Runtime::Runsc, "KILL", 5;
    runsc_2_sigterm_5s: "2", Runtime::Runsc, "TERM", 5;
}

/// With oom_group off a container can be OOM-killed again and again while
/// containerd is away: each kill is its own TaskOOM (below the queue's
/// coalescing bound), and every one arrives, before the exit.
#[test]
fn repeated_ooms_while_away() {
    let c = Containerd::start("1.7");
    // A kill every ~0.3 s: far enough apart for the watch to see each alone.
    c.run_detached(
        "again",
        &[
            "--memory-limit",
            "33554432",
            "--annotation",
            "io.oomguard.oom-group=false",
        ],
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' USR1; while :; do dd if=/dev/zero of=/dev/null bs=100M count=1; sleep 0.3; done",
        ],
    );
    let pid = c.task_pid("again");
    let memcg = PathBuf::from(format!("/sys/fs/cgroup/memory/{}/again", c.namespace));
    c.kill("KILL");
    let before = memcg_oom_kills(&memcg);
    let deadline = Instant::now() + Duration::from_secs(30);
    while memcg_oom_kills(&memcg) < before + 10 {
        assert!(Instant::now() < deadline, "no repeated OOM kills");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, libc::SIGUSR1);
    wait_gone(
        &[pid],
        Duration::from_secs(20),
        "the container after SIGUSR1",
    );
    let while_away = memcg_oom_kills(&memcg) - before;
    c.restart(true);
    let events = c.events();
    c.release_events();
    let exit = events
        .init_exit("again", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no /tasks/exit: {:?}", events.topics("again")));
    assert_eq!(
        exit.exit_status(),
        0,
        "oom_group off: the init's own status"
    );
    let topics = events.topics("again");
    let exit_at = topics.iter().position(|t| t == "/tasks/exit").unwrap();
    assert!(
        topics[..exit_at].iter().all(|t| t == "/tasks/oom"),
        "{topics:?}"
    );
    let ooms = exit_at as u64;
    eprintln!("OUTAGE repeated OOMs: {while_away} OOM kills while away, {ooms} TaskOOM delivered");
    // One more when a TaskOOM queued just before containerd died had not
    // reached it yet.
    assert!(
        ooms == while_away || ooms == while_away + 1,
        "{ooms} TaskOOM for {while_away} OOM kills while containerd was away: {topics:?}"
    );
    c.remove("again");
    c.assert_clean(&["again"]);
}

#[test]
fn cri_oom_killed_survives_restart_1_7() {
    cri_outage("1.7", Duration::from_secs(5));
}

#[test]
fn cri_oom_killed_survives_restart_2() {
    cri_outage("2", Duration::from_secs(5));
}

/// `make test-outage`: five minutes away (OOMGUARD_OUTAGE_SECS overrides):
/// runc and runsc on containerd 1.7 (SIGKILL) and 2.x (SIGTERM), and a CRI
/// pod on 2.x.
#[test]
#[ignore = "long: make test-outage"]
fn long_outage() {
    let secs = std::env::var("OOMGUARD_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let down = Duration::from_secs(secs);
    // Side by side: they sleep through the outage together.
    std::thread::scope(|s| {
        s.spawn(|| outage("1.7", Runtime::Runc, "KILL", down));
        s.spawn(|| outage("2", Runtime::Runc, "TERM", down));
        s.spawn(|| outage("1.7", Runtime::Runsc, "KILL", down));
        s.spawn(|| outage("2", Runtime::Runsc, "TERM", down));
        s.spawn(|| cri_outage("2", down));
    });
}

#[derive(Clone, Copy, Debug)]
enum Runtime {
    Runc,
    /// runsc 20240729 (trixie's), ptrace platform.
    Runsc,
}

const RUNSC_BUILD: &str = "20240729";

/// Waits for SIGUSR1, then runs out of memory in a child while the shell
/// lives on: the verdict's oom_group kill (which must not wait for
/// containerd) takes the container.
const OOM_ON_USR1: &str =
    "trap 'dd if=/dev/zero of=/dev/null bs=200M count=1' USR1; while :; do sleep 0.1; done";
/// The same for the stock shim, which has no oom_group: dd replaces the
/// shell, so the OOM kill ends the container there too.
const STOCK_OOM_ON_USR1: &str =
    "trap 'exec dd if=/dev/zero of=/dev/null bs=200M count=1' USR1; while :; do sleep 0.1; done";
const EXIT_ON_USR1: &str = "trap 'exit 0' USR1; while :; do sleep 0.1; done";

const OOM_IDS: [&str; 2] = ["oom-a", "oom-b"];
const CLEAN_ID: &str = "clean";
const EXEC_ID: &str = "sleeper";
const STOCK_OOM: &str = "stock-oom";
const STOCK_CLEAN: &str = "stock-clean";

struct Setup {
    runtime: Runtime,
    /// runsc: the TOML for --runtime-config-path.
    config: Option<String>,
}

impl Setup {
    fn new(c: &Containerd, runtime: Runtime) -> Setup {
        let config = match runtime {
            Runtime::Runc => None,
            Runtime::Runsc => {
                oomguard_integration::cri::ensure_runsc();
                Some(runsc_config(c, RUNSC_BUILD))
            }
        };
        Setup { runtime, config }
    }

    /// `ctr run -d` of `sh -c SCRIPT` under `shim`, with a memory limit.
    fn run(&self, c: &Containerd, shim: &str, id: &str, limit: Option<&str>, script: &str) {
        let root = match self.runtime {
            Runtime::Runc => rootfs().display().to_string(),
            Runtime::Runsc => own_rootfs(c, id),
        };
        let mut args = vec!["run", "-d", "--runtime", shim];
        if let Some(cfg) = &self.config {
            args.extend(["--runtime-config-path", cfg.as_str()]);
        }
        if let Some(l) = limit {
            args.extend(["--memory-limit", l]);
        }
        args.extend(["--rootfs", &root, id, "/bin/sh", "-c", script]);
        assert_ok(&c.ctr(&args), &format!("ctr run -d {id}"));
    }

    /// Signals a container's init while containerd is away: straight to its
    /// host pid for runc, through `runsc kill` for a gVisor sandbox (whose
    /// host pid is the sentry's).
    fn signal(&self, c: &Containerd, id: &str, pid: i32) {
        match self.runtime {
            Runtime::Runc => signal(pid, libc::SIGUSR1),
            Runtime::Runsc => {
                let out = Command::new(runsc_binary(RUNSC_BUILD))
                    .arg("--root")
                    .arg(c.dir.join("runsc-root"))
                    .args(["kill", id, "USR1"])
                    .output()
                    .expect("run runsc kill");
                assert_ok(&out, &format!("runsc kill {id} USR1"));
            }
        }
    }

    fn limit(&self) -> &'static str {
        match self.runtime {
            Runtime::Runc => "33554432",
            // The sentry itself needs some: gVisor's limit is the sandbox's.
            Runtime::Runsc => "67108864",
        }
    }
}

fn outage(version: &str, runtime: Runtime, signal: &str, down: Duration) {
    let c = Containerd::start(version);
    let setup = Setup::new(&c, runtime);
    let limit = setup.limit();
    for id in OOM_IDS {
        setup.run(&c, RUNTIME, id, Some(limit), OOM_ON_USR1);
    }
    setup.run(&c, RUNTIME, CLEAN_ID, None, EXIT_ON_USR1);
    // An exec that dies with its container while containerd is away.
    let out = c.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        EXEC_ID,
        OOM_IDS[0],
        "/bin/sleep",
        "1000",
    ]);
    assert_ok(&out, "ctr task exec -d");
    let stock = matches!(runtime, Runtime::Runc);
    if stock {
        setup.run(&c, STOCK_RUNTIME, STOCK_OOM, Some(limit), STOCK_OOM_ON_USR1);
        setup.run(&c, STOCK_RUNTIME, STOCK_CLEAN, None, EXIT_ON_USR1);
    }
    let running = c.tasks();
    let ids: Vec<&str> = OOM_IDS
        .iter()
        .copied()
        .chain([CLEAN_ID])
        .chain(if stock {
            vec![STOCK_OOM, STOCK_CLEAN]
        } else {
            vec![]
        })
        .collect();
    let pids: Vec<(&str, i32)> = ids
        .iter()
        .map(|id| {
            let t = running
                .iter()
                .find(|t| t.0 == *id && t.2 == "RUNNING")
                .unwrap_or_else(|| panic!("{id} not running: {running:?}"));
            (*id, t.1)
        })
        .collect();

    c.kill(signal);
    let went = Instant::now();
    for (id, pid) in &pids {
        setup.signal(&c, id, *pid);
    }
    // Every init ends while containerd is away.
    let inits: Vec<i32> = pids.iter().map(|(_, p)| *p).collect();
    wait_gone(
        &inits,
        Duration::from_secs(60),
        "containers signalled with containerd away",
    );
    std::thread::sleep(down.saturating_sub(went.elapsed()));
    let away = went.elapsed();

    c.restart(true);
    let events = c.events();
    // Before anything queued is delivered, containerd (reconnected to the
    // shims) sees each decided exit: the clean one stopped; the OOM-killed
    // ones still running, because an exit whose TaskOOM containerd has not
    // taken is not released (Wait, State), or CRI would record it before
    // the reason.
    let held = c.tasks();
    let state = |id: &str| held.iter().find(|t| t.0 == id).map(|t| t.2.clone());
    assert_eq!(state(CLEAN_ID).as_deref(), Some("STOPPED"), "{held:?}");
    for id in OOM_IDS {
        assert_eq!(state(id).as_deref(), Some("RUNNING"), "{held:?}");
    }
    c.release_events();
    for id in OOM_IDS {
        assert_oom_story(&events, id, true, 137);
    }
    assert_oom_story(&events, CLEAN_ID, false, 0);
    // The exec's exit (it died with its container) before the init's.
    let story = events.of(OOM_IDS[0]);
    let exec_exit = story
        .iter()
        .position(|e| e.topic == "/tasks/exit" && e.process_id() == EXEC_ID)
        .unwrap_or_else(|| panic!("no exit of the exec: {:?}", events.topics(OOM_IDS[0])));
    let init_exit = story
        .iter()
        .position(|e| e.topic == "/tasks/exit" && e.process_id() == OOM_IDS[0])
        .expect("init exit");
    assert!(exec_exit < init_exit, "{:?}", events.topics(OOM_IDS[0]));
    assert_eq!(story[exec_exit].exit_status(), 137, "the exec's status");

    // containerd kept every oomguard task, stopped with the decided status.
    let after = c.tasks();
    for id in OOM_IDS.iter().chain([&CLEAN_ID]) {
        assert!(
            after.iter().any(|t| t.0 == *id && t.2 == "STOPPED"),
            "{id} after the restart: {after:?}"
        );
    }
    let stock_seen = stock.then(|| stock_summary(&events, &after));
    eprintln!(
        "OUTAGE containerd={version} runtime={runtime:?} signal=SIG{signal} away={:.0}s oomguard: TaskOOM {}/2, TaskExit {}/4 (in order); stock: {}",
        away.as_secs_f64(),
        OOM_IDS.iter().filter(|id| events.topics(id).contains(&"/tasks/oom".to_string())).count(),
        OOM_IDS
            .iter()
            .chain([&CLEAN_ID])
            .map(|id| events.of(id).iter().filter(|e| e.topic == "/tasks/exit").count())
            .sum::<usize>(),
        stock_seen.unwrap_or_else(|| "-".into())
    );

    // Deleting them now publishes TaskDelete with the same status.
    for id in OOM_IDS.iter().chain([&CLEAN_ID]) {
        c.remove(id);
        let del = events
            .wait_for(id, "/tasks/delete", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{id}: no /tasks/delete: {:?}", events.topics(id)));
        let want = if *id == CLEAN_ID { 0 } else { 137 };
        assert_eq!(del.exit_status(), want, "{id}: TaskDelete status");
    }
    if stock {
        c.remove(STOCK_OOM);
        c.remove(STOCK_CLEAN);
    }
    let mut all = ids.clone();
    all.retain(|id| !id.starts_with("stock"));
    c.assert_clean(&all);
}

/// What the stock shim's containers looked like to the subscriber.
fn stock_summary(events: &Events, after: &[(String, i32, String)]) -> String {
    let exits = [STOCK_OOM, STOCK_CLEAN]
        .iter()
        .filter(|id| events.init_exit(id, Duration::from_secs(2)).is_some())
        .count();
    let ooms = usize::from(events.topics(STOCK_OOM).contains(&"/tasks/oom".to_string()));
    let kept = [STOCK_OOM, STOCK_CLEAN]
        .iter()
        .filter(|id| after.iter().any(|t| t.0 == **id))
        .count();
    format!("TaskOOM {ooms}/1, TaskExit {exits}/2, tasks kept by containerd {kept}/2")
}

/// The host pid of a CRI container's init (runc's state; CRI's root).
fn cri_pid(id: &str) -> i32 {
    let out = Command::new("runc")
        .args(["--root", "/run/containerd/runc/k8s.io", "state", id])
        .output()
        .expect("run runc state");
    assert_ok(&out, &format!("runc state {id}"));
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runc state JSON");
    state["pid"].as_i64().expect("pid") as i32
}

/// Kubernetes' view: a pod's container is OOM-killed while containerd is
/// down (SIGKILL), and another exits cleanly; containerd comes back on the
/// very same paths and CRI recovers its containers. The kubelet then sees
/// `OOMKilled` 137 and `Completed` 0, and still does after a second
/// restart. The stock handler's pod beside it is printed for comparison.
fn cri_outage(version: &str, down: Duration) {
    const MIB32: i64 = 32 << 20;
    let mut c = Cri::start(version);
    let pod = c.run_pod("outage", HANDLER);
    let oom = c.run_container(&pod, "oom", OOM_ON_USR1, Some(MIB32));
    let clean = c.run_container(&pod, "clean", EXIT_ON_USR1, None);
    let stock_pod = c.run_pod("stock-outage", STOCK_HANDLER);
    let stock = c.run_container(&stock_pod, "oom", STOCK_OOM_ON_USR1, Some(MIB32));
    let pids: Vec<i32> = [&oom, &clean, &stock]
        .iter()
        .map(|id| cri_pid(id))
        .collect();

    c.kill("KILL");
    let went = Instant::now();
    for pid in &pids {
        signal(*pid, libc::SIGUSR1);
    }
    wait_gone(
        &pids,
        Duration::from_secs(60),
        "CRI containers signalled with containerd away",
    );
    std::thread::sleep(down.saturating_sub(went.elapsed()));
    let away = went.elapsed();

    c.restart();
    let stock_seen = c.exit_of(&stock);
    assert_eq!(c.exit_of(&oom), (137, "OOMKilled".to_string()));
    assert_eq!(c.exit_of(&clean), (0, "Completed".to_string()));
    // And again: what CRI recorded is kept across a restart.
    c.kill("KILL");
    c.restart();
    assert_eq!(c.exit_of(&oom), (137, "OOMKilled".to_string()));
    assert_eq!(c.exit_of(&clean), (0, "Completed".to_string()));
    eprintln!(
        "OUTAGE-CRI containerd={version} SIGKILL away={:.0}s: oomguard oom {:?}, clean {:?}; stock oom {stock_seen:?}",
        away.as_secs_f64(),
        c.exit_of(&oom),
        c.exit_of(&clean)
    );
    c.remove_pod(&pod);
    c.remove_pod(&stock_pod);
    c.assert_clean();
}
