//! oomguard's typed OOM event (`/oomguard/oom`, oomguard.events.v1.OOMKill)
//! against real containerd 1.7 and 2.x, with runc and runsc, as an operator
//! sees it through `containerd-shim-oomguard-v2 events --json` (`ctr events`
//! skips a type it does not know): after the container's /tasks/oom, before
//! its /tasks/exit, with what the kernel said about the kill; and the same
//! when the kill happens while containerd is down.

use std::time::Duration;

use serde_json::Value;

use oomguard_integration::cri::ensure_runsc;
use oomguard_integration::gvisor::{run_gvisor, runsc_config};
use oomguard_integration::harness::{
    assert_exit, assert_ok, signal, wait_gone, Containerd, Events, RUNTIME,
};
use oomguard_integration::on_containerd_1_7_and_2;

on_containerd_1_7_and_2!(runc_oom_kills, runsc_oom_kills, survives_restart);

const MIB: u64 = 1 << 20;
const LIMIT: &str = "33554432"; // 32 MiB
const DD: &str = "dd if=/dev/zero of=/dev/null bs=100M count=1";
const RUNSC_BUILD: &str = "20240729";
const OOM_TOPIC: &str = "/oomguard/oom";

/// The container's story as the subscriber saw it: /tasks/oom, then
/// /oomguard/oom, then the init's /tasks/exit, one report per TaskOOM.
/// Returns the report's fields and the exit's.
fn typed_story(events: &Events, id: &str) -> (Value, Value) {
    let exit = events
        .init_exit(id, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{id}: no /tasks/exit: {:?}", events.topics(id)));
    let story = events.of(id);
    let topics = events.topics(id);
    let at = |topic: &str| topics.iter().position(|t| t == topic);
    let exit_at = story
        .iter()
        .position(|e| e.topic == "/tasks/exit" && e.process_id() == id)
        .expect("init exit");
    let (Some(oom), Some(typed)) = (at("/tasks/oom"), at(OOM_TOPIC)) else {
        panic!("{id}: /tasks/oom and {OOM_TOPIC} expected: {topics:?}");
    };
    assert!(
        oom < typed && typed < exit_at,
        "{id}: /tasks/oom, {OOM_TOPIC}, /tasks/exit expected in that order: {topics:?}"
    );
    let count = |topic: &str| topics.iter().filter(|t| *t == topic).count();
    assert_eq!(count(OOM_TOPIC), count("/tasks/oom"), "{topics:?}");
    eprintln!("{id}: {topics:?}\n{id}: {OOM_TOPIC} {}", story[typed].body);
    (story[typed].body.clone(), exit.body)
}

fn u64_of(body: &Value, key: &str) -> u64 {
    body.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{key} missing: {body}"))
}

/// The memcg's figures of a report: limit as given, usage and peak known
/// and at most a little over it (a charge in flight passes the v1 limit by
/// a page: 64 MiB + 4 KiB was seen).
fn assert_memcg(body: &Value, limit: u64) {
    assert_eq!(u64_of(body, "memcg_limit_bytes"), limit, "{body}");
    let usage = u64_of(body, "memcg_usage_bytes");
    let peak = u64_of(body, "memcg_peak_bytes");
    assert!(usage <= limit + MIB, "usage above the limit: {body}");
    // The kill came at the limit: the high-water mark shows it.
    assert!(peak <= limit + MIB && peak >= limit / 2, "peak: {body}");
}

fn runc_oom_kills(version: &str) {
    let c = Containerd::start(version);
    let events = c.oomguard_events();

    // The init runs out of memory: the kernel names it.
    let out = c.run(
        RUNTIME,
        "ev-init",
        &["--memory-limit", LIMIT],
        &["/bin/sh", "-c", DD],
    );
    assert_exit(&out, 137, "exit status");
    let (oom, exit) = typed_story(&events, "ev-init");
    assert_eq!(oom["container_id"], "ev-init");
    let source = oom["source"].as_str().unwrap_or_default();
    assert!(
        source == "SOURCE_MEMCG_EVENT" || source == "SOURCE_KERNEL_LOG",
        "{oom}"
    );
    assert_memcg(&oom, 32 * MIB);
    assert_eq!(oom["victim_pid"], exit["pid"], "the init was the victim");
    assert_eq!(oom["victim_comm"], "dd");
    assert!(u64_of(&oom, "victim_rss_kib") > 16 * 1024, "{oom}");
    assert_eq!(oom["processes_killed"], 1);
    assert_eq!(oom["group_kill"], true, "oom_group is on by default");
    assert_eq!(oom["host_oom"], false);
    assert_eq!(oom["episodes"], 1);
    assert!(oom.get("sandbox_id").is_none(), "no pod: {oom}");
    assert!(oom["timestamp"].is_string(), "{oom}");

    // A child is killed while the init lives on (oom_group off): the report
    // comes at once, in a pod named by the CRI annotation.
    let cmd = format!("{DD}; sleep 1000");
    c.run_detached(
        "ev-child",
        &[
            "--memory-limit",
            LIMIT,
            "--annotation",
            "io.oomguard.oom-group=false",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=ev-pod",
        ],
        &["/bin/sh", "-c", &cmd],
    );
    let init = c.task_pid("ev-child");
    let oom = events
        .wait_for("ev-child", OOM_TOPIC, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no {OOM_TOPIC}: {:?}", events.topics("ev-child")))
        .body;
    eprintln!("ev-child: {OOM_TOPIC} {oom}");
    let topics = events.topics("ev-child");
    let oom_at = topics.iter().position(|t| t == "/tasks/oom");
    let typed_at = topics.iter().position(|t| t == OOM_TOPIC);
    assert!(
        oom_at.is_some() && oom_at < typed_at,
        "/tasks/oom first: {topics:?}"
    );
    assert!(!topics.contains(&"/tasks/exit".to_string()), "{topics:?}");
    assert_eq!(oom["victim_comm"], "dd");
    assert_ne!(oom["victim_pid"], init, "a child, not the init");
    assert_eq!(oom["group_kill"], false);
    assert_eq!(oom["sandbox_id"], "ev-pod");
    assert_memcg(&oom, 32 * MIB);
    c.remove("ev-child");
    c.assert_clean(&["ev-init", "ev-child"]);
}

fn runsc_oom_kills(version: &str) {
    ensure_runsc();
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, RUNSC_BUILD);
    let events = c.oomguard_events();

    // The host kills the sandbox: gVisor has no OOM killer inside.
    let out = run_gvisor(
        &c,
        &cfg,
        "ev-g",
        &["--memory-limit", "67108864"],
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=200M count=1; exit 0",
        ],
        false,
    );
    assert_exit(&out, 137, "exit status");
    let (oom, _) = typed_story(&events, "ev-g");
    assert_eq!(oom["source"], "SOURCE_GVISOR_SENTRY");
    assert_eq!(oom["sandbox_id"], "ev-g", "its own sandbox");
    assert_eq!(oom["group_kill"], true);
    // The sandbox's host memcg.
    assert_memcg(&oom, 64 * MIB);
    // The kernel log names the sentry, not the application.
    if let Some(comm) = oom.get("victim_comm") {
        assert_ne!(comm, "dd", "{oom}");
    }

    // A container over its own limit in a pod: oomguard's enforcement.
    let pod = [
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=ev-pod",
    ];
    let out = run_gvisor(&c, &cfg, "ev-pod", &pod, &["/bin/sleep", "1000"], true);
    assert_ok(&out, "sandbox");
    let out = run_gvisor(
        &c,
        &cfg,
        "ev-own",
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=ev-pod",
            "--memory-limit",
            "67108864",
            "--mount",
            "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev",
        ],
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=300M",
            "count=1",
        ],
        false,
    );
    assert_exit(&out, 137, "over its own limit");
    let (oom, _) = typed_story(&events, "ev-own");
    assert_eq!(oom["source"], "SOURCE_OWN_LIMIT");
    assert_eq!(oom["sandbox_id"], "ev-pod");
    assert_eq!(u64_of(&oom, "memcg_limit_bytes"), 64 * MIB);
    assert!(u64_of(&oom, "memcg_usage_bytes") > 64 * MIB, "{oom}");
    assert_eq!(oom["group_kill"], true);
    assert!(oom.get("processes_killed").is_none(), "{oom}");
    assert!(oom.get("victim_pid").is_none(), "{oom}");
    c.remove("ev-pod");
    c.assert_clean(&["ev-g", "ev-own", "ev-pod"]);
}

/// Waits for SIGUSR1, then runs out of memory in a child.
const OOM_ON_USR1: &str =
    "trap 'dd if=/dev/zero of=/dev/null bs=200M count=1' USR1; while :; do sleep 0.1; done";

/// containerd is killed; the container is OOM-killed while it is down; it
/// comes back on the same state. The one subscriber, kept running through
/// the outage, sees the report in order once the shim's queue is replayed.
fn survives_restart(version: &str) {
    let c = Containerd::start(version);
    let events = c.oomguard_events();
    c.run_detached(
        "ev-away",
        &["--memory-limit", LIMIT],
        &["/bin/sh", "-c", OOM_ON_USR1],
    );
    let pid = c.task_pid("ev-away");
    c.kill("KILL");
    signal(pid, libc::SIGUSR1);
    wait_gone(
        &[pid],
        Duration::from_secs(30),
        "the container with containerd away",
    );
    c.restart(true);
    // Subscribed again before the shim's queued events are let through.
    events.wait_live(&c);
    c.release_events();
    let (oom, exit) = typed_story(&events, "ev-away");
    assert_eq!(exit["exit_status"], 137);
    assert_eq!(oom["victim_comm"], "dd");
    assert_ne!(oom["victim_pid"], exit["pid"], "the child, not the shell");
    assert_eq!(oom["group_kill"], true);
    assert_eq!(oom["processes_killed"], 1);
    assert_memcg(&oom, 32 * MIB);
    let stderr = events.stderr();
    eprintln!("ev-away: the subscriber's stderr:\n{stderr}");
    assert!(
        stderr.contains("went away") && stderr.contains("is back"),
        "the subscriber says what happened: {stderr}"
    );
    c.remove("ev-away");
    c.assert_clean(&["ev-away"]);
}
