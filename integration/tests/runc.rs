//! The shim runs runc containers under real containerd 1.6, 1.7 and 2.x,
//! driven with ctr over containerd's real socket.

use std::process::Command;
use std::time::Duration;

use oomguard_integration::harness::{
    assert_exit, assert_ok, processes_running, rootfs, run_with_timeout, unique, Containerd,
    RUNTIME,
};

use oomguard_integration::on_every_containerd;

on_every_containerd!(
    exit_codes,
    signals,
    stdin_and_logs,
    exec_with_and_without_tty,
    terminal_run,
    pause_resume_ps_stats_update,
    children_outliving_init,
    children_die_with_an_init_without_its_own_pid_namespace,
    twenty_in_parallel,
    delete_after_shim_killed,
    bad_options_are_named,
);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn exit_codes(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    let out = c.run(RUNTIME, "echo", &[], &["/bin/echo", "hello"]);
    assert_ok(&out, "echo");
    assert_eq!(stdout(&out), "hello\n");
    for (id, cmd, code) in [
        ("t-true", "true", 0),
        ("t-false", "false", 1),
        ("t-exit3", "exit 3", 3),
    ] {
        let out = c.run(RUNTIME, id, &[], &["/bin/sh", "-c", cmd]);
        assert_exit(&out, code, id);
        let exit = events
            .init_exit(id, Duration::from_secs(10))
            .expect("exit event");
        assert_eq!(exit.exit_status(), code as u64);
    }
    events
        .wait_for("t-exit3", "/tasks/delete", Duration::from_secs(10))
        .expect("delete event");
    let topics = events.topics("t-exit3");
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{topics:?}"
    );
    c.assert_clean(&["echo", "t-true", "t-false", "t-exit3"]);
}

fn signals(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    // SIGKILL to the init.
    c.run_detached("sig", &[], &["/bin/sleep", "1000"]);
    // SIGTERM to an exec: an init in its own pid namespace ignores signals
    // it has no handler for, an exec process dies of them (143).
    let out = c.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "term",
        "sig",
        "/bin/sleep",
        "1000",
    ]);
    assert_ok(&out, "exec -d");
    assert_ok(
        &c.ctr(&["task", "kill", "--exec-id", "term", "-s", "SIGTERM", "sig"]),
        "kill exec",
    );
    let exec_exit = events
        .wait_for_exit_of("sig", "term", Duration::from_secs(10))
        .expect("exec exit event");
    assert_eq!(exec_exit.exit_status(), 143);
    assert_ok(&c.ctr(&["task", "kill", "-s", "SIGKILL", "sig"]), "kill");
    let exit = events
        .init_exit("sig", Duration::from_secs(10))
        .expect("exit event");
    assert_eq!(exit.exit_status(), 137);
    assert!(events.topics("sig").iter().all(|t| t != "/tasks/oom"));
    // Killing what is gone answers NotFound.
    let again = c.ctr(&["task", "kill", "-s", "SIGKILL", "sig"]);
    assert!(!again.status.success());
    c.remove("sig");
    // An init with a SIGTERM handler ends as the handler says (docker stop).
    c.run_detached(
        "trap",
        &[],
        &["/bin/sh", "-c", "trap 'exit 143' TERM; sleep 1000 & wait"],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_ok(
        &c.ctr(&["task", "kill", "-s", "SIGTERM", "trap"]),
        "kill trap",
    );
    assert_eq!(
        events
            .init_exit("trap", Duration::from_secs(10))
            .unwrap()
            .exit_status(),
        143
    );
    c.remove("trap");
    c.assert_clean(&["sig", "trap"]);
}

fn stdin_and_logs(version: &str) {
    let c = Containerd::start(version);
    // stdin from the client, EOF when it closes.
    let root = rootfs().display().to_string();
    let mut cmd = c.ctr_command();
    cmd.args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        &root,
        "cat",
        "/bin/cat",
    ]);
    cmd.stdin(std::process::Stdio::piped());
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"through stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "through stdin\n");

    // file:// log URI: stdout and stderr land in the file.
    let log = c.dir.join("logs/file.log");
    let uri = format!("file://{}", log.display());
    let out = c.run(
        RUNTIME,
        "log-file",
        &["--log-uri", &uri],
        &["/bin/sh", "-c", "echo out; echo err >&2"],
    );
    assert_ok(&out, "file log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("out\n") && text.contains("err\n"), "{text:?}");

    // binary:// log URI: a logger reading fd 3 (stdout) and fd 4 (stderr).
    let logger = c.dir.join("logger.sh");
    let sink = c.dir.join("logs/binary.log");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nexec 5>&-\ncat <&3 >> {0}.out & cat <&4 >> {0}.err & wait\n",
            sink.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&logger)
        .status()
        .unwrap();
    let uri = format!("binary://{}", logger.display());
    let out = c.run(
        RUNTIME,
        "log-bin",
        &["--log-uri", &uri],
        &["/bin/sh", "-c", "echo bout; echo berr >&2"],
    );
    assert_ok(&out, "binary log");
    let read = |ext: &str| {
        let p = format!("{}.{ext}", sink.display());
        for _ in 0..50 {
            if let Ok(t) = std::fs::read_to_string(&p) {
                if !t.is_empty() {
                    return t;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        String::new()
    };
    assert_eq!(read("out"), "bout\n");
    assert_eq!(read("err"), "berr\n");
    c.assert_clean(&["cat", "log-file", "log-bin"]);
}

/// Runs a command under a pseudo-terminal (ctr -t needs one).
fn under_pty(c: &Containerd, args: &str) -> std::process::Output {
    let ctr = c.ctr_command();
    let line = format!(
        "{} --address {} --namespace {} {args}",
        ctr.get_program().to_string_lossy(),
        c.socket.display(),
        c.namespace
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    run_with_timeout(cmd, Duration::from_secs(30))
}

fn exec_with_and_without_tty(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    c.run_detached("ex", &[], &["/bin/sleep", "1000"]);
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "ex",
        "/bin/sh",
        "-c",
        "echo from-exec; exit 5",
    ]);
    assert_exit(&out, 5, "exit status");
    assert_eq!(stdout(&out), "from-exec\n");
    let out = under_pty(&c, "task exec -t --exec-id e2 ex /bin/tty");
    assert_ok(&out, "exec -t");
    assert!(stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));
    let topics = events.topics("ex");
    for t in ["/tasks/exec-added", "/tasks/exec-started"] {
        assert!(topics.iter().any(|x| x == t), "{t} missing: {topics:?}");
    }
    let e1 = events
        .of("ex")
        .into_iter()
        .find(|e| e.topic == "/tasks/exit" && e.process_id() == "e1")
        .unwrap();
    assert_eq!(e1.exit_status(), 5);
    c.remove("ex");
    c.assert_clean(&["ex"]);
}

fn terminal_run(version: &str) {
    let c = Containerd::start(version);
    let root = rootfs().display().to_string();
    let out = under_pty(
        &c,
        &format!("run --rm -t --runtime {RUNTIME} --rootfs {root} tty /bin/sh -c 'tty; exit 4'"),
    );
    assert_exit(&out, 4, "tty run");
    assert!(stdout(&out).contains("/dev/pts/0"), "{}", stdout(&out));
    c.assert_clean(&["tty"]);
}

fn pause_resume_ps_stats_update(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    c.run_detached(
        "pr",
        &["--memory-limit", "67108864"],
        &["/bin/sh", "-c", "sleep 1000 & sleep 1000"],
    );
    let state = |c: &Containerd| stdout(&c.ctr(&["task", "ls"]));
    assert_ok(&c.ctr(&["task", "pause", "pr"]), "pause");
    assert!(state(&c).contains("PAUSED"), "{}", state(&c));
    assert_ok(&c.ctr(&["task", "resume", "pr"]), "resume");
    assert!(state(&c).contains("RUNNING"), "{}", state(&c));
    let topics = events.topics("pr");
    assert!(
        topics.contains(&"/tasks/paused".to_string())
            && topics.contains(&"/tasks/resumed".to_string()),
        "{topics:?}"
    );

    let ps = stdout(&c.ctr(&["task", "ps", "pr"]));
    assert_eq!(ps.lines().count(), 3, "init, its child and a header: {ps}");

    let metrics = stdout(&c.ctr(&["task", "metrics", "pr"]));
    assert!(metrics.contains("memory.usage_in_bytes"), "{metrics}");
    assert!(metrics.contains("67108864"), "the limit shows: {metrics}");
    assert!(
        metrics.contains("pids.current             2") || metrics.contains("pids.current"),
        "{metrics}"
    );

    update_memory_limit(&c, "pr", 134_217_728);
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/pr/memory.limit_in_bytes",
        c.namespace
    ))
    .unwrap();
    assert_eq!(limit.trim(), "134217728");
    c.remove("pr");
    c.assert_clean(&["pr"]);
}

/// ctr has no `task update`: call containerd's Tasks.Update over gRPC.
fn update_memory_limit(c: &Containerd, id: &str, limit: i64) {
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::UpdateTaskRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = containerd_client::connect(&c.socket)
            .await
            .expect("connect containerd");
        let mut client = TasksClient::new(channel);
        let resources = serde_json::json!({ "memory": { "limit": limit } });
        let req = UpdateTaskRequest {
            container_id: id.to_string(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                    .to_string(),
                value: serde_json::to_vec(&resources).unwrap(),
            }),
            ..Default::default()
        };
        let mut req = tonic_request(req, &c.namespace);
        req.set_timeout(Duration::from_secs(20));
        client.update(req).await.expect("Tasks.Update");
    });
}

fn tonic_request<T>(msg: T, ns: &str) -> containerd_client::tonic::Request<T> {
    let mut req = containerd_client::tonic::Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    req
}

fn children_outliving_init(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    let out = c.run(
        RUNTIME,
        "orphans",
        &[],
        &["/bin/sh", "-c", "sleep 1000 & sleep 1000 & exit 7"],
    );
    assert_exit(&out, 7, "exit status");
    assert_eq!(
        events
            .init_exit("orphans", Duration::from_secs(5))
            .unwrap()
            .exit_status(),
        7
    );
    c.assert_clean(&["orphans"]);
}

/// An init that shares another's pid namespace (or the host's) leaves its
/// children running when it exits; the shim kills them before it reports
/// the exit (as the Go shim does): when TaskExit arrives, the child is gone
/// although nothing deleted the task yet. (CRI's StopContainer waits for the
/// container's output to close, which such a child holds open.)
fn children_die_with_an_init_without_its_own_pid_namespace(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    c.run_detached("holder", &[], &["/bin/sleep", "1000"]);
    let ls = stdout(&c.ctr(&["task", "ls"]));
    let holder_pid: i32 = ls
        .lines()
        .find(|l| l.starts_with("holder "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("holder's pid in: {ls}"));
    // Children no other test runs (tests of all versions run at once).
    let marker = || (100_000 + unique()).to_string();
    let cases = [
        ("joined", format!("pid:/proc/{holder_pid}/ns/pid"), marker()),
        // The host's pid namespace (this test's; PID 1's is not readable here).
        (
            "hostpid",
            format!("pid:/proc/{}/ns/pid", std::process::id()),
            marker(),
        ),
    ];
    for (id, ns, marker) in &cases {
        let script = format!("sleep {marker} & sleep 0.5; exit 3");
        c.run_detached(id, &["--with-ns", ns], &["/bin/sh", "-c", &script]);
        let exit = events.init_exit(id, Duration::from_secs(10));
        assert_eq!(exit.map(|e| e.exit_status()), Some(3), "{id}: TaskExit");
        assert_eq!(
            processes_running(&format!("sleep {marker}")),
            Vec::<i32>::new(),
            "{id}: the init's child outlived its TaskExit"
        );
        assert!(
            c.log().contains(&format!(
                "exit id={id}: init exited without a pid namespace of its own"
            )),
            "{id}: the kill-all is logged"
        );
        c.remove(id);
    }
    // A container with its own pid namespace needs no kill-all: the kernel
    // ends its children with its init.
    c.remove("holder");
    assert!(!c.log().contains("exit id=holder: init exited without"));
    c.assert_clean(&["holder", "joined", "hostpid"]);
}

fn twenty_in_parallel(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    let id = format!("par-{i}");
                    let code = i % 5;
                    let out = c.run(
                        RUNTIME,
                        &id,
                        &[],
                        &["/bin/sh", "-c", &format!("sleep 0.2; exit {code}")],
                    );
                    assert_exit(&out, code, &id);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    for i in 0..20 {
        let id = format!("par-{i}");
        assert_eq!(
            events
                .init_exit(&id, Duration::from_secs(5))
                .unwrap()
                .exit_status(),
            (i % 5) as u64
        );
    }
    let ids: Vec<String> = (0..20).map(|i| format!("par-{i}")).collect();
    c.assert_clean(&ids.iter().map(String::as_str).collect::<Vec<_>>());
}

fn delete_after_shim_killed(version: &str) {
    let c = Containerd::start(version);
    c.run_detached("orphan", &[], &["/bin/sleep", "1000"]);
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    // containerd sees the shim die and runs `containerd-shim-oomguard-v2 delete`.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ls = stdout(&c.ctr(&["task", "ls"]));
        if !ls.contains("orphan") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task still listed: {ls}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ok(&c.ctr(&["container", "rm", "orphan"]), "container rm");
    c.assert_clean(&["orphan"]);
    assert!(
        c.log().contains("cleaning up dead shim"),
        "containerd cleaned up through delete"
    );
}

fn bad_options_are_named(version: &str) {
    let c = Containerd::start(version);
    let root = rootfs().display().to_string();
    // Runs container `id` with a runtime config file holding `toml`; it must
    // fail. Returns the config's path and ctr's error.
    let run_with_config = |id: &str, toml: &str| {
        let cfg = c.dir.join(format!("{id}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let cfg = cfg.display().to_string();
        let out = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &cfg,
            "--rootfs",
            &root,
            id,
            "/bin/true",
        ]);
        assert!(!out.status.success());
        (cfg, String::from_utf8_lossy(&out.stderr).to_string())
    };
    // A runtime binary that does not exist: Create fails with its name.
    let (_, err) = run_with_config("bad", "binary_name = \"/nonexistent/runc\"\n");
    assert!(err.contains("/nonexistent/runc"), "{err}");
    // A config file with an unknown key: the error names file and key.
    let (cfg, err) = run_with_config("bad2", "binary_nmae = \"runc\"\n");
    assert!(err.contains(&cfg) && err.contains("binary_nmae"), "{err}");
    let _ = c.ctr(&["container", "rm", "bad", "bad2"]);
    c.assert_clean(&["bad", "bad2"]);
}
