//! Docker on oomguard: dockerd 26 on containerd 1.7 and dockerd 28 on
//! containerd 2.x (the pairs Debian ships), each private (`hack/dockerd.sh`,
//! `hack/containerd.sh`), with the documented daemon.json
//! (`hack/docker/daemon.json`). What a Docker user sees: `docker run`'s exit
//! code, `docker inspect`'s State.OOMKilled and ExitCode, `docker events`.

use std::time::Duration;

use oomguard_integration::docker::{exit_code, Dockerd, PAIRS};
use oomguard_integration::harness::{assert_ok, RUNTIME, STOCK_RUNTIME};

macro_rules! on_every_docker {
    ($($(#[$attr:meta])* $scenario:ident),* $(,)?) => {
        mod docker_26 { $( $(#[$attr])* #[test] fn $scenario() { super::$scenario(super::PAIRS[0]) } )* }
        mod docker_28 { $( $(#[$attr])* #[test] fn $scenario() { super::$scenario(super::PAIRS[1]) } )* }
    };
}

on_every_docker!(
    oom_is_reported,
    clean_and_failing_exits_and_logs,
    exec_stats_pause_update,
    exec_oom_kills_the_container,
    stop_and_kill,
    restart_after_oom,
    runsc_oom_is_reported,
    oom_story_in_docker_logs,
);

const DD: &str = "dd if=/dev/zero of=/dev/null bs=100M count=1";

fn start((docker, containerd): (&str, &str)) -> Dockerd {
    Dockerd::start(docker, containerd)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `oom` comes before the first `die`, and that `die` has `exit_code`.
fn assert_oom_then_die(d: &Dockerd, name: &str, exit_code: &str) {
    let events = d.events(name);
    let actions: Vec<&str> = events.iter().map(|(a, _)| a.as_str()).collect();
    let oom = actions.iter().position(|a| *a == "oom");
    let die = actions.iter().position(|a| *a == "die");
    let (Some(oom), Some(die)) = (oom, die) else {
        panic!("{name}: expected oom and die events, got {actions:?}");
    };
    assert!(oom < die, "{name}: oom after die: {actions:?}");
    assert_eq!(
        events[die].1["exitCode"], exit_code,
        "{name}: die event {:?}",
        events[die]
    );
}

fn assert_state(d: &Dockerd, name: &str, oom_killed: bool, exit: i64) {
    let state = d.wait_exited(name, Duration::from_secs(30));
    assert_eq!(
        (state["OOMKilled"].as_bool(), state["ExitCode"].as_i64()),
        (Some(oom_killed), Some(exit)),
        "{name}: State {state}"
    );
}

/// The OOM cases, under oomguard (by runtime type and through both
/// daemon.json entries) and under the stock shim, where it differs.
fn oom_is_reported(pair: (&str, &str)) {
    let d = start(pair);
    // The container's own process is OOM-killed: 137 under both shims. Only
    // oomguard promises `oom` before `die` and OOMKilled=true: the stock
    // shim's TaskOOM races its TaskExit, so its side is not asserted.
    let out = d.run(RUNTIME, "init-oom", &["-m", "32m"], &["sh", "-c", DD]);
    assert_eq!(exit_code(&out), 137, "init-oom: {out:?}");
    assert_state(&d, "init-oom", true, 137);
    assert_oom_then_die(&d, "init-oom", "137");
    let out = d.run(
        STOCK_RUNTIME,
        "init-oom-stock",
        &["-m", "32m"],
        &["sh", "-c", DD],
    );
    assert_eq!(exit_code(&out), 137, "init-oom-stock: {out:?}");

    // A child is OOM-killed and the shell exits 0: the stock shim reports
    // success (Docker then shows ExitCode 0, with OOMKilled=true when its
    // TaskOOM won the race); oomguard kills the container (oom_group) and
    // reports 137.
    let child = format!("{DD}; exit 0");
    let out = d.run(
        STOCK_RUNTIME,
        "child-oom-stock",
        &["-m", "32m"],
        &["sh", "-c", &child],
    );
    assert_eq!(exit_code(&out), 0, "stock: {out:?}");
    let state = d.wait_exited("child-oom-stock", Duration::from_secs(30));
    assert_eq!(
        state["ExitCode"].as_i64(),
        Some(0),
        "child-oom-stock: {state}"
    );
    for (runtime, name) in [
        (RUNTIME, "child-oom"),
        ("oomguard", "child-oom-daemon-json"),
        ("oomguard-runc", "child-oom-config-path"),
    ] {
        let out = d.run(runtime, name, &["-m", "32m"], &["sh", "-c", &child]);
        assert_eq!(exit_code(&out), 137, "{name}: {out:?}");
        assert_state(&d, name, true, 137);
        assert_oom_then_die(&d, name, "137");
    }
    // The oom event is what `docker events --filter event=oom` shows.
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let out = d.docker(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "event=oom",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    assert_ok(&out, "docker events --filter event=oom");
    // Each oomguard container once; the stock shim's usually, not always.
    let mut names: Vec<String> = stdout(&out)
        .lines()
        .filter(|n| !n.ends_with("-stock"))
        .map(String::from)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "child-oom",
            "child-oom-config-path",
            "child-oom-daemon-json",
            "init-oom",
        ]
    );
    d.assert_clean();
}

fn clean_and_failing_exits_and_logs(pair: (&str, &str)) {
    let d = start(pair);
    let out = d.run(
        RUNTIME,
        "clean",
        &["-m", "32m"],
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2"],
    );
    assert_eq!(exit_code(&out), 0, "{out:?}");
    assert_state(&d, "clean", false, 0);
    assert!(!d.actions("clean").contains(&"oom".to_string()));

    // docker logs (json-file): stdout and stderr kept apart.
    let inspect = d.inspect("clean");
    assert_eq!(inspect["HostConfig"]["LogConfig"]["Type"], "json-file");
    let logs = d.docker(&["logs", "clean"]);
    assert_ok(&logs, "docker logs");
    assert_eq!(stdout(&logs), "to-stdout\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "to-stderr\n");

    let out = d.run(RUNTIME, "fails", &[], &["sh", "-c", "exit 3"]);
    assert_eq!(exit_code(&out), 3);
    assert_state(&d, "fails", false, 3);

    // Detached, with a pty: the output is in the log too.
    let out = d.run(
        RUNTIME,
        "tty",
        &["-d", "-t"],
        &["sh", "-c", "tty; echo tty-done"],
    );
    assert_ok(&out, "docker run -d -t");
    assert_state(&d, "tty", false, 0);
    let logs = stdout(&d.docker(&["logs", "tty"]));
    assert!(
        logs.contains("/dev/pts/") && logs.contains("tty-done"),
        "{logs:?}"
    );
    d.assert_clean();
}

fn exec_stats_pause_update(pair: (&str, &str)) {
    let d = start(pair);
    let out = d.run(RUNTIME, "svc", &["-d", "-m", "32m"], &["sleep", "600"]);
    assert_ok(&out, "docker run -d");
    let id = stdout(&out).trim().to_string();

    // docker exec: output and exit code.
    let out = d.docker(&["exec", "svc", "sh", "-c", "echo exec-out; exit 7"]);
    assert_eq!((exit_code(&out), stdout(&out)), (7, "exec-out\n".into()));
    // docker exec -it, with a real pty from script(1).
    let cmd = format!(
        "{} exec -it svc sh -c 'tty; echo tty-ok; exit 5'",
        d.docker_command_line()
    );
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &cmd, "/dev/null"]);
    script.stdin(std::process::Stdio::null());
    let out = oomguard_integration::harness::run_with_timeout(script, Duration::from_secs(60));
    let text = stdout(&out);
    assert!(
        text.contains("/dev/pts/") && text.contains("tty-ok"),
        "exec -it: {text:?} {out:?}"
    );
    assert_eq!(exit_code(&out), 5, "exec -it exit code: {out:?}");

    // docker stats: the shim's metrics (usage and the 32 MiB limit).
    let out = d.docker(&["stats", "--no-stream", "--format", "{{json .}}", "svc"]);
    assert_ok(&out, "docker stats");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let mem = stats["MemUsage"].as_str().unwrap_or_default();
    let (usage, limit) = mem.split_once(" / ").unwrap_or_default();
    assert_eq!(limit, "32MiB", "{stats}");
    assert!(!usage.is_empty() && usage != "0B", "{stats}");
    assert_eq!(stats["PIDs"], "1", "{stats}");

    // docker pause / unpause.
    assert_ok(&d.docker(&["pause", "svc"]), "docker pause");
    assert_eq!(d.inspect("svc")["State"]["Status"], "paused");
    assert_ok(&d.docker(&["unpause", "svc"]), "docker unpause");
    assert_eq!(d.inspect("svc")["State"]["Status"], "running");
    assert_ok(&d.docker(&["exec", "svc", "true"]), "exec after unpause");

    // docker update -m: the new limit reaches the cgroup.
    assert_ok(
        &d.docker(&["update", "-m", "64m", "--memory-swap", "64m", "svc"]),
        "docker update",
    );
    let limit_file = format!(
        "/sys/fs/cgroup/memory/{}/{id}/memory.limit_in_bytes",
        d.cgroup_parent()
    );
    let limit = std::fs::read_to_string(&limit_file).expect(&limit_file);
    assert_eq!(limit.trim(), "67108864");
    let out = d.docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "svc"]);
    assert!(stdout(&out).trim().ends_with("/ 64MiB"), "{out:?}");
    assert_ok(&d.docker(&["kill", "svc"]), "docker kill");
    assert_state(&d, "svc", false, 137);
    d.assert_clean();
}

/// An exec that the OOM killer takes: with oom_group (the default) the whole
/// container goes, as on cgroup v2 with memory.oom.group; Docker shows
/// OOMKilled and 137.
fn exec_oom_kills_the_container(pair: (&str, &str)) {
    let d = start(pair);
    let out = d.run(RUNTIME, "svc", &["-d", "-m", "32m"], &["sleep", "600"]);
    assert_ok(&out, "docker run -d");
    let out = d.docker(&["exec", "svc", "sh", "-c", DD]);
    assert_eq!(exit_code(&out), 137, "the exec's own status: {out:?}");
    assert_state(&d, "svc", true, 137);
    assert_oom_then_die(&d, "svc", "137");
    d.assert_clean();
}

fn stop_and_kill(pair: (&str, &str)) {
    let d = start(pair);
    // docker stop: SIGTERM, which an init with a handler obeys...
    let trap = "trap 'exit 0' TERM; sleep 600 & wait";
    assert_ok(
        &d.run(RUNTIME, "obeys", &["-d"], &["sh", "-c", trap]),
        "run obeys",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_ok(&d.docker(&["stop", "-t", "10", "obeys"]), "docker stop");
    assert_state(&d, "obeys", false, 0);
    // ...and an init without one ignores, so SIGKILL follows: 137, no OOM.
    assert_ok(
        &d.run(RUNTIME, "ignores", &["-d"], &["sleep", "600"]),
        "run ignores",
    );
    assert_ok(&d.docker(&["stop", "-t", "1", "ignores"]), "docker stop");
    assert_state(&d, "ignores", false, 137);
    // docker kill: SIGKILL, 137, no OOM; and a signal of the user's choice.
    assert_ok(
        &d.run(RUNTIME, "killed", &["-d", "-m", "32m"], &["sleep", "600"]),
        "run killed",
    );
    assert_ok(&d.docker(&["kill", "killed"]), "docker kill");
    assert_state(&d, "killed", false, 137);
    let usr1 = "trap 'exit 42' USR1; sleep 600 & wait";
    assert_ok(
        &d.run(RUNTIME, "usr1", &["-d"], &["sh", "-c", usr1]),
        "run usr1",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_ok(&d.docker(&["kill", "-s", "USR1", "usr1"]), "docker kill -s");
    assert_state(&d, "usr1", false, 42);
    for name in ["obeys", "ignores", "killed", "usr1"] {
        let actions = d.actions(name);
        assert!(!actions.contains(&"oom".to_string()), "{name}: {actions:?}");
    }
    d.assert_clean();
}

/// --restart on-failure:2: the first run is OOM-killed (child OOM + exit 0,
/// which the stock shim would call success and not restart); the restart
/// runs clean, and OOMKilled does not stick to it.
fn restart_after_oom(pair: (&str, &str)) {
    let d = start(pair);
    let script = format!(
        "if [ -e /tmp/ran ]; then echo second-run; exit 0; fi; touch /tmp/ran; {DD}; exit 0"
    );
    let out = d.run(
        RUNTIME,
        "again",
        &["-d", "-m", "32m", "--restart", "on-failure:2"],
        &["sh", "-c", &script],
    );
    assert_ok(&out, "docker run --restart");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = d.inspect("again");
        if c["RestartCount"] == 1 && c["State"]["Status"] == "exited" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no restart: {c}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_state(&d, "again", false, 0);
    let events = d.events("again");
    let story: Vec<String> = events
        .iter()
        .filter(|(a, _)| a == "oom" || a == "die" || a == "start")
        .map(|(a, attrs)| match a.as_str() {
            "die" => format!("die({})", attrs["exitCode"].as_str().unwrap_or("?")),
            _ => a.clone(),
        })
        .collect();
    assert_eq!(story, ["start", "oom", "die(137)", "start", "die(0)"]);
    assert!(stdout(&d.docker(&["logs", "again"])).contains("second-run"));
    d.assert_clean();
}

/// The daemon.json entry "oomguard-runsc" (ConfigPath -> runsc.toml:
/// binary_name = "runsc", platform ptrace, network none).
fn runsc_oom_is_reported(pair: (&str, &str)) {
    oomguard_integration::docker::ensure_deps(&["runsc"]);
    let d = start(pair);
    let out = d.run("oomguard-runsc", "runsc-clean", &["-m", "32m"], &["dmesg"]);
    assert_eq!(exit_code(&out), 0, "{out:?}");
    assert!(
        stdout(&out).contains("gVisor"),
        "not under runsc: {}",
        stdout(&out)
    );
    assert_state(&d, "runsc-clean", false, 0);
    let child = format!("{DD}; exit 0");
    for (name, cmd) in [("runsc-init-oom", DD), ("runsc-child-oom", child.as_str())] {
        let out = d.run("oomguard-runsc", name, &["-m", "32m"], &["sh", "-c", cmd]);
        assert_eq!(exit_code(&out), 137, "{name}: {out:?}");
        assert_state(&d, name, true, 137);
        assert_oom_then_die(&d, name, "137");
    }
    d.assert_clean();
}

/// With the annotation `io.oomguard.oom-report=stderr` (`docker run
/// --annotation`), `docker logs` shows the OOM story on stderr; without it,
/// the container's output is its own.
fn oom_story_in_docker_logs(pair: (&str, &str)) {
    let d = start(pair);
    let script = format!("echo before; {DD}");
    for (name, opts, story) in [
        (
            "story",
            &["-m", "32m", "--annotation", "io.oomguard.oom-report=stderr"][..],
            true,
        ),
        ("no-story", &["-m", "32m"][..], false),
    ] {
        let out = d.run(RUNTIME, name, opts, &["sh", "-c", &script]);
        assert_eq!(exit_code(&out), 137, "{name}: {out:?}");
        assert_state(&d, name, true, 137);
        let logs = d.docker(&["logs", name]);
        assert_ok(&logs, "docker logs");
        assert_eq!(stdout(&logs), "before\n", "{name}");
        let stderr = String::from_utf8_lossy(&logs.stderr).to_string();
        assert_eq!(
            stderr.contains(
                "oomguard: OOM-killed: the container reached its memory limit of 32.0 MiB"
            ),
            story,
            "{name}: {stderr:?}"
        );
        if story {
            eprintln!("docker logs {name} (stderr):\n{stderr}");
        }
    }
    d.assert_clean();
}
