//! Faults around the shim, made for real:
//! - the shim killed -9 in the middle of an OOM: containerd's clean-up
//!   (`containerd-shim-oomguard-v2 ... delete`) reports 137 and leaves no
//!   mount, cgroup, runtime state or shim socket;
//! - the runtime binary failing create, start, kill or delete: a wrapper
//!   around the real runc (or runsc) is the configured `binary_name`; it
//!   fails the chosen action, before or after running the real one, and
//!   otherwise execs it. Each RPC answers an error naming the binary, the
//!   action and the container, and nothing is left behind;
//! - a Kill whose runtime call is slow: it is answered before the exit it
//!   caused is published (containerd closes the connection once it handled
//!   the exit, so a later answer is lost);
//! - runsc unable to start a sandbox (a flag it does not know, or a failed
//!   `runsc start`): the task ends and the shim exits when containerd
//!   deletes it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use oomguard_integration::cri::{Cri, HANDLER};
use oomguard_integration::gvisor::{own_rootfs, runsc_binary};
use oomguard_integration::harness::{
    assert_ok, memcg_oom_kills, rootfs, signal, wait_gone, Containerd, Events, RUNTIME,
};

oomguard_integration::on_containerd_1_7_and_2!(
    shim_killed_mid_oom,
    cri_shim_killed_mid_oom,
    runc_fails_each_action,
    kill_is_answered_before_its_exit,
    runsc_cannot_start_a_sandbox,
);

const OOM_ON_USR1: &str =
    "trap 'dd if=/dev/zero of=/dev/null bs=100M count=1' USR1; while :; do sleep 0.1; done";

/// Waits until the OOM killer struck in `memcg`.
fn wait_oom_kill(memcg: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while memcg_oom_kills(memcg) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no OOM kill in {}",
            memcg.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shim is stopped, the OOM killer strikes in its container, then the
/// shim is killed -9 before it could act.
fn shim_killed_mid_oom(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    c.run_detached(
        "k9",
        &["--memory-limit", "33554432"],
        &["/bin/sh", "-c", OOM_ON_USR1],
    );
    let init = c.task_pid("k9");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    signal(shims[0], libc::SIGSTOP);
    signal(init, libc::SIGUSR1);
    wait_oom_kill(&PathBuf::from(format!(
        "/sys/fs/cgroup/memory/{}/k9",
        c.namespace
    )));
    signal(shims[0], libc::SIGKILL);
    let exit = events
        .init_exit("k9", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no /tasks/exit: {:?}", events.topics("k9")));
    assert_eq!(exit.exit_status(), 137, "containerd's clean-up status");
    wait_gone(
        &[init],
        Duration::from_secs(10),
        "the container after delete",
    );
    assert!(c.tasks().iter().all(|t| t.0 != "k9"), "{:?}", c.tasks());
    assert_ok(&c.ctr(&["container", "rm", "k9"]), "ctr container rm");
    c.assert_clean(&["k9"]);
}

/// The same for a pod under CRI: a snapshot-mounted rootfs per container
/// and one shim (and socket) for the pod.
fn cri_shim_killed_mid_oom(version: &str) {
    let c = Cri::start(version);
    let events = Events::on(version, &c.socket, "k8s.io");
    let pod = c.run_pod("k9", HANDLER);
    let id = c.run_container(&pod, "oom", OOM_ON_USR1, Some(32 << 20));
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    signal(shims[0], libc::SIGSTOP);
    let out = std::process::Command::new("runc")
        .args(["--root", "/run/containerd/runc/k8s.io", "state", &id])
        .output()
        .expect("runc state");
    assert_ok(&out, "runc state");
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runc state JSON");
    let init = state["pid"].as_i64().expect("pid") as i32;
    signal(init, libc::SIGUSR1);
    // CRI's cgroup parent for a pod without one of its own.
    wait_oom_kill(&PathBuf::from(format!("/sys/fs/cgroup/memory/k8s.io/{id}")));
    signal(shims[0], libc::SIGKILL);
    // containerd's clean-up publishes 137 for the container...
    let exit = events
        .init_exit(&id, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no /tasks/exit: {:?}", events.topics(&id)));
    assert_eq!(exit.exit_status(), 137, "containerd's clean-up status");
    // ...but CRI has its exit already: its Wait on the shim failed when the
    // connection closed, which containerd's client turns into 255
    // ("Unknown exit status"), for the stock shim alike.
    let (code, reason) = c.exit_of(&id);
    eprintln!("CRI after the pod's shim was killed -9: exit code {code}, reason {reason}");
    c.remove_pod(&pod);
    c.assert_clean();
}

/// A runtime binary that fails on request: `fail-ACTION` in `faults`
/// refuses ACTION before the real binary runs, `fail-after-ACTION` fails it
/// after the real binary did its work, `slow-after-ACTION` returns 1 s
/// after the real binary did its work.
fn fault_wrapper(dir: &Path, real: &Path) -> PathBuf {
    let faults = dir.join("faults");
    std::fs::create_dir_all(&faults).unwrap();
    // Named after the real one: oomguard treats a binary named runsc* as
    // gVisor's.
    let name = real.file_name().expect("a binary").to_string_lossy();
    let wrapper = dir.join(format!("{name}-with-faults"));
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
# Fault injection around the real runtime (see integration/tests/faults.rs).
# A failure is reported as the runtime reports its own: a JSON error line in
# its --log file (its stderr may be the container's), and on stderr.
log=
prev=
for a in "$@"; do
    [ "$prev" = --log ] && log=$a
    prev=$a
done
fail() {{
    echo "injected fault: $1" >&2
    [ -n "$log" ] && printf '{{"level":"error","msg":"injected fault: %s"}}\n' "$1" >>"$log"
    exit 1
}}
for a in "$@"; do
    if [ -e "{f}/fail-$a" ]; then
        fail "$a refused"
    fi
    if [ -e "{f}/fail-after-$a" ]; then
        "{real}" "$@"
        fail "$a failed after it ran"
    fi
    if [ -e "{f}/slow-after-$a" ]; then
        "{real}" "$@"
        status=$?
        sleep 1
        exit $status
    fi
done
exec "{real}" "$@"
"#,
            f = faults.display(),
            real = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

fn inject(dir: &Path, fault: &str) {
    std::fs::write(dir.join("faults").join(fault), "").unwrap();
}

fn clear(dir: &Path, fault: &str) {
    std::fs::remove_file(dir.join("faults").join(fault)).unwrap();
}

/// ctr failed, and its message names the binary, the action, the container
/// and the injected cause.
fn assert_failed(out: &Output, binary: &Path, action: &str, id: &str, cause: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{action} {id} succeeded: {err}");
    let names = format!("{} {action} {id}", binary.display());
    assert!(
        err.contains(&names) && err.contains(cause),
        "{action} {id}: the error should name {names:?} and {cause:?}: {err}"
    );
}

fn which(binary: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{binary} not on PATH"))
}

/// The fault wrapper around runc, and an oomguard TOML file naming it.
fn wrapped_runc(c: &Containerd) -> (PathBuf, String) {
    let wrapper = fault_wrapper(&c.dir, &which("runc"));
    let config = c.dir.join("fault-runc.toml");
    std::fs::write(
        &config,
        format!("binary_name = \"{}\"\n", wrapper.display()),
    )
    .unwrap();
    (wrapper, config.display().to_string())
}

fn runc_fails_each_action(version: &str) {
    let c = Containerd::start(version);
    let (wrapper, config) = wrapped_runc(&c);
    let root = rootfs().display().to_string();
    // Every container in one "pod", so one shim serves them all and stays
    // up: what a failure leaves is the shim's to clean, not containerd's
    // clean-up after a shim that exited.
    let run = |id: &str, cmd: &str| -> Output {
        c.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &config,
            "--annotation",
            "io.kubernetes.cri.sandbox-id=f-pod",
            "--rootfs",
            &root,
            id,
            "/bin/sh",
            "-c",
            cmd,
        ])
    };
    assert_ok(&run("f-pod", "sleep 1000"), "run f-pod");
    let mut ids = vec!["f-pod"];

    // Create and start, refused or failing after runc did them. A failed
    // create leaves nothing; a failed start leaves a created container,
    // which ctr's delete removes.
    for (action, fault, id) in [
        ("create", "fail-create", "f-create"),
        ("create", "fail-after-create", "f-create-after"),
        ("start", "fail-start", "f-start"),
        ("start", "fail-after-start", "f-start-after"),
    ] {
        let cause = if fault.starts_with("fail-after") {
            format!("injected fault: {action} failed after it ran")
        } else {
            format!("injected fault: {action} refused")
        };
        inject(&c.dir, fault);
        let out = run(id, "sleep 1000");
        assert_failed(&out, &wrapper, action, id, &cause);
        clear(&c.dir, fault);
        if action == "create" {
            assert_nothing_of(&c, id);
        }
        c.remove(id);
        ids.push(id);
    }
    // Kill: the error names it; the container still runs and can be killed.
    assert_ok(&run("f-kill", "sleep 1000"), "run f-kill");
    inject(&c.dir, "fail-kill");
    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "f-kill"]);
    assert_failed(
        &out,
        &wrapper,
        "kill",
        "f-kill",
        "injected fault: kill refused",
    );
    assert!(c
        .tasks()
        .iter()
        .any(|t| t.0 == "f-kill" && t.2 == "RUNNING"));
    clear(&c.dir, "fail-kill");
    c.remove("f-kill");
    ids.push("f-kill");
    // Delete, refused or failing after runc deleted: a second delete works.
    for (fault, id, cause) in [
        ("fail-delete", "f-delete", "injected fault: delete refused"),
        (
            "fail-after-delete",
            "f-delete-after",
            "injected fault: delete failed after it ran",
        ),
    ] {
        assert_ok(&run(id, "exit 0"), &format!("run {id}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !c.tasks().iter().any(|t| t.0 == id && t.2 == "STOPPED") {
            assert!(std::time::Instant::now() < deadline, "{id} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        inject(&c.dir, fault);
        let out = c.ctr(&["task", "delete", id]);
        assert_failed(&out, &wrapper, "delete", id, cause);
        clear(&c.dir, fault);
        assert_ok(
            &c.ctr(&["task", "delete", id]),
            &format!("second delete of {id}"),
        );
        assert_ok(&c.ctr(&["container", "rm", id]), "ctr container rm");
        ids.push(id);
    }
    for id in &ids[1..] {
        assert_nothing_of(&c, id);
    }
    assert_eq!(c.shim_pids().len(), 1, "the pod's shim served them all");
    c.remove("f-pod");
    c.assert_clean(&ids);
}

/// A Kill whose `runc kill` takes a second after the signal: the init dies
/// at once, but its TaskExit must not reach containerd before the Kill's
/// answer. containerd handles an exit by Delete and Shutdown and then closes
/// the shim connection, which loses an answer still owed (CRI's
/// StopPodSandbox failed with "ttrpc: closed" on a loaded CI).
fn kill_is_answered_before_its_exit(version: &str) {
    let c = Containerd::start(version);
    let (_, config) = wrapped_runc(&c);
    let id = "k-slow";
    c.run_detached(
        id,
        &["--runtime-config-path", &config],
        &["/bin/sh", "-c", "sleep 1000"],
    );
    let events = c.events();
    inject(&c.dir, "slow-after-kill");
    let sent = Instant::now();
    assert_ok(
        &c.ctr(&["task", "kill", "-s", "SIGKILL", id]),
        "kill with a slow runc kill",
    );
    let answered = Instant::now();
    assert!(
        answered - sent >= Duration::from_secs(1),
        "the wrapper's kill took a second"
    );
    let exit = events
        .init_exit(id, Duration::from_secs(10))
        .expect("TaskExit of the killed init");
    assert_eq!(exit.exit_status(), 137);
    // The exit went out after the answer; ctr's own exit is the slack.
    assert!(
        exit.seen_at + Duration::from_millis(300) >= answered,
        "TaskExit arrived {:?} before the Kill was answered",
        answered.saturating_duration_since(exit.seen_at)
    );
    clear(&c.dir, "slow-after-kill");
    c.remove(id);
    c.assert_clean(&[id]);
}

/// No runc state and no process left of container `id` (its shim still
/// serves others).
fn assert_nothing_of(c: &Containerd, id: &str) {
    let state = format!("/run/containerd/runc/{}/{id}", c.namespace);
    assert!(!Path::new(&state).exists(), "runc state left: {state}");
    let procs = format!("/sys/fs/cgroup/memory/{}/{id}/cgroup.procs", c.namespace);
    let left = std::fs::read_to_string(&procs).unwrap_or_default();
    assert!(left.trim().is_empty(), "processes left in {procs}: {left}");
}

fn runsc_cannot_start_a_sandbox(version: &str) {
    oomguard_integration::cri::ensure_runsc();
    let c = Containerd::start(version);
    let runsc = runsc_binary("20240729");
    let run = |id: &str, config: &Path| -> Output {
        let root = own_rootfs(&c, id);
        c.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &config.display().to_string(),
            "--rootfs",
            &root,
            id,
            "/bin/sleep",
            "1000",
        ])
    };
    let runsc_root = c.dir.join("runsc-root");
    let toml = |name: &str, binary: &Path, extra: &str| -> PathBuf {
        oomguard_integration::gvisor::installed_runsc_toml(
            &c.dir.join(name),
            "20240729",
            binary,
            Some(&runsc_root),
            extra,
        )
    };

    // A flag runsc does not know, in [runsc_config]: runsc create fails.
    let bad_flag = toml("bad-flag.toml", &runsc, "no-such-flag = \"1\"\n");
    let out = run("g-flag", &bad_flag);
    assert_failed(&out, &runsc, "create", "g-flag", "no-such-flag");
    c.remove("g-flag");

    // The sandbox is made, but `runsc start` fails: containerd deletes the
    // task, which takes the sandbox down, and the shim exits.
    let wrapper = fault_wrapper(&c.dir, &runsc);
    let wrapped = toml("fault-runsc.toml", &wrapper, "");
    inject(&c.dir, "fail-start");
    let out = run("g-start", &wrapped);
    assert_failed(
        &out,
        &wrapper,
        "start",
        "g-start",
        "injected fault: start refused",
    );
    clear(&c.dir, "fail-start");
    c.remove("g-start");

    c.assert_clean(&["g-flag", "g-start"]);
    // No runsc state and no sandbox left for either.
    let left: Vec<String> = std::fs::read_dir(&runsc_root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with("runsc.log"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "runsc state left: {left:?}");
    let sandboxes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " "))
        .filter(|cmd| cmd.contains(&runsc_root.display().to_string()))
        .collect::<Vec<_>>();
    assert!(sandboxes.is_empty(), "runsc processes left: {sandboxes:#?}");
}
