//! SIGTERM and SIGINT end the shim as they end containerd's Go shim
//! (pkg/shim: both cancel its serving context and it exits): the
//! containers are not the shim's to stop; containerd sees the shim's
//! socket close and cleans up through `containerd-shim-oomguard-v2 delete`,
//! publishing TaskExit 137. What is queued for containerd is flushed first,
//! for 2 s at most, so a node's shutdown is not held up by a containerd that
//! is already gone.

use std::time::{Duration, Instant};

use oomguard_integration::cri::{Cri, HANDLER};
use oomguard_integration::harness::{assert_ok, signal, wait_gone, Containerd};

oomguard_integration::on_containerd_1_7_and_2!(
    sigterm_ends_the_shim,
    sigint_ends_the_shim,
    sigterm_with_containerd_away_is_bounded,
    sigterm_ends_a_pod_shim,
);

/// The shim's bound for a signal (serve.rs SIGNAL_GRACE), plus what a
/// loaded CI machine adds.
const EXIT_WITHIN: Duration = Duration::from_secs(4);

fn sigterm_ends_the_shim(version: &str) {
    ends_the_shim(version, libc::SIGTERM);
}

fn sigint_ends_the_shim(version: &str) {
    ends_the_shim(version, libc::SIGINT);
}

fn the_shim(c: &Containerd) -> i32 {
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim expected: {shims:?}");
    shims[0]
}

fn ends_the_shim(version: &str, sig: i32) {
    let c = Containerd::start(version);
    let events = c.events();
    c.run_detached("t1", &[], &["/bin/sleep", "1000"]);
    let init = c.task_pid("t1");
    let shim = the_shim(&c);
    let sent = Instant::now();
    signal(shim, sig);
    wait_gone(&[shim], EXIT_WITHIN, "the shim after the signal");
    eprintln!("shim exited {:?} after signal {sig}", sent.elapsed());
    // containerd's clean-up after a shim that went away: `delete` kills the
    // container (runc delete --force) and containerd reports 137.
    let exit = events
        .init_exit("t1", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no /tasks/exit for t1: {:?}", events.topics("t1")));
    assert_eq!(exit.exit_status(), 137);
    wait_gone(&[init], Duration::from_secs(10), "the container's init");
    let tasks = c.tasks();
    assert!(tasks.iter().all(|t| t.0 != "t1"), "task kept: {tasks:?}");
    assert_ok(&c.ctr(&["container", "rm", "t1"]), "ctr container rm");
    c.assert_clean(&["t1"]);
}

/// containerd is away and the shim holds a TaskExit it cannot deliver:
/// SIGTERM still ends it within the bound (the event is lost, and says so in
/// the shim's log). containerd, back, finds the shim gone and cleans up.
fn sigterm_with_containerd_away_is_bounded(version: &str) {
    let c = Containerd::start(version);
    c.run_detached(
        "t2",
        &[],
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 3' USR1; while :; do sleep 0.1; done",
        ],
    );
    let init = c.task_pid("t2");
    let shim = the_shim(&c);
    c.kill("KILL");
    signal(init, libc::SIGUSR1);
    wait_gone(&[init], Duration::from_secs(10), "the container's init");
    // The exit is decided and queued; containerd is not there to take it.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    signal(shim, libc::SIGTERM);
    wait_gone(
        &[shim],
        EXIT_WITHIN,
        "the shim after SIGTERM, containerd away",
    );
    let took = sent.elapsed();
    eprintln!("shim exited {took:?} after SIGTERM with containerd away");
    assert!(
        took >= Duration::from_millis(1500),
        "the shim gave containerd no time to come back: {took:?}"
    );
    c.restart(false);
    // containerd cannot reach the shim: it cleans up after it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.tasks().iter().any(|t| t.0 == "t2") {
        assert!(Instant::now() < deadline, "task t2 kept: {:?}", c.tasks());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ok(&c.ctr(&["container", "rm", "t2"]), "ctr container rm");
    c.assert_clean(&["t2"]);
}

/// A CRI pod's shim: CRI keeps a Wait open on every running container. A
/// Wait whose process still runs is owed no answer, so the shim does not
/// sit out its grace for them; containerd then cleans the pod's tasks up.
fn sigterm_ends_a_pod_shim(version: &str) {
    let c = Cri::start(version);
    let pod = c.run_pod("term", HANDLER);
    let a = c.run_container(&pod, "a", "sleep 600", None);
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let sent = Instant::now();
    signal(shims[0], libc::SIGTERM);
    wait_gone(&shims, EXIT_WITHIN, "the pod's shim after SIGTERM");
    let took = sent.elapsed();
    eprintln!("pod shim exited {took:?} after SIGTERM");
    // Nothing was owed: well within the 2 s grace (about 50 ms here).
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let (code, reason) = c.exit_of(&a);
    eprintln!("CRI after SIGTERM of the pod's shim: exit code {code}, reason {reason}");
    assert_ne!(code, 0, "a container whose shim went is not Completed");
    c.remove_pod(&pod);
    c.assert_clean();
}
