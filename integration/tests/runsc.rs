//! gVisor: oomguard delegating to real runsc under real containerd, single
//! containers and pods (the CRI annotations runsc reads), with the runsc.toml
//! `install` writes on this machine (runsc 20240729: gVisor's default
//! platform, systrap; runsc 20221219: its default, ptrace).

use std::path::PathBuf;
use std::time::Duration;

use oomguard_integration::gvisor::{installed_runsc_toml, run_gvisor, runsc_binary, runsc_config};
use oomguard_integration::harness::{assert_exit, assert_ok, assert_oom_story, Containerd};

macro_rules! on_containerd_and_runsc {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_7_runsc_20240729 { $( #[test] fn $scenario() { super::$scenario("1.7", "20240729") } )* }
        mod containerd_2_runsc_20240729 { $( #[test] fn $scenario() { super::$scenario("2", "20240729") } )* }
        mod containerd_1_7_runsc_20221219 { $( #[test] fn $scenario() { super::$scenario("1.7", "20221219") } )* }
    };
}

on_containerd_and_runsc!(
    single_container,
    sandbox_oom_kill,
    pod_oom_kills_every_container,
    sandbox_killed_by_user,
    monitoring_socket_is_private,
    monitoring_socket_after_shim_killed,
    own_memory_limits_in_a_pod,
);

fn single_container(version: &str, build: &str) {
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, build);
    let events = c.events();
    let out = run_gvisor(
        &c,
        &cfg,
        "g-echo",
        &[],
        &["/bin/sh", "-c", "echo hello from gvisor; exit 3"],
        false,
    );
    assert_exit(&out, 3, "exit status");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from gvisor\n");
    assert_oom_story(&events, "g-echo", false, 3);
    let out = run_gvisor(&c, &cfg, "g-true", &[], &["/bin/true"], false);
    assert_exit(&out, 0, "exit status");
    // exec inside the sandbox
    let out = run_gvisor(&c, &cfg, "g-exec", &[], &["/bin/sleep", "1000"], true);
    assert_ok(&out, "run -d");
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "g-exec",
        "/bin/sh",
        "-c",
        "echo in-sandbox; exit 6",
    ]);
    assert_exit(&out, 6, "exit status");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-sandbox\n");
    let ps = String::from_utf8_lossy(&c.ctr(&["task", "ps", "g-exec"]).stdout).to_string();
    assert!(ps.lines().count() >= 2, "{ps}");
    c.remove("g-exec");
    c.assert_clean(&["g-echo", "g-true", "g-exec"]);
}

fn sandbox_oom_kill(version: &str, build: &str) {
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, build);
    let events = c.events();
    // The host kills the sentry; gVisor has no OOM killer inside.
    let out = run_gvisor(
        &c,
        &cfg,
        "g-oom",
        &["--memory-limit", "67108864"],
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=200M count=1; exit 0",
        ],
        false,
    );
    assert_exit(&out, 137, "exit status");
    assert_oom_story(&events, "g-oom", true, 137);
    c.assert_clean(&["g-oom"]);
}

fn pod(c: &Containerd, cfg: &str, pod: &str, limit: &str) {
    let sandbox = format!("io.kubernetes.cri.sandbox-id={pod}");
    let out = run_gvisor(
        c,
        cfg,
        pod,
        &[
            "--memory-limit",
            limit,
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            &sandbox,
        ],
        &["/bin/sleep", "1000"],
        true,
    );
    assert_ok(&out, "sandbox");
}

fn join(c: &Containerd, cfg: &str, pod: &str, id: &str, cmd: &[&str]) {
    let sandbox = format!("io.kubernetes.cri.sandbox-id={pod}");
    let out = run_gvisor(
        c,
        cfg,
        id,
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            &sandbox,
        ],
        cmd,
        true,
    );
    assert_ok(&out, id);
}

fn pod_oom_kills_every_container(version: &str, build: &str) {
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, build);
    let events = c.events();
    pod(&c, &cfg, "gpod", "67108864");
    join(&c, &cfg, "gpod", "gapp", &["/bin/sleep", "1000"]);
    // A joining container's own exit comes from runsc wait.
    let short = format!("io.kubernetes.cri.sandbox-id={}", "gpod");
    let out = run_gvisor(
        &c,
        &cfg,
        "gshort",
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            &short,
        ],
        &["/bin/sh", "-c", "echo joined; exit 9"],
        false,
    );
    assert_exit(&out, 9, "exit status");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "joined\n",
        "a joining container's stdio"
    );
    // Fill the pod: the host OOM-kills the sandbox, every container dies.
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "hog",
        "gapp",
        "/bin/sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=200M count=1",
    ]);
    assert_exit(
        &out,
        137,
        "an exec that died with the sandbox: not gVisor's 128",
    );
    for id in ["gpod", "gapp"] {
        assert_oom_story(&events, id, true, 137);
    }
    assert_oom_story(&events, "gshort", false, 9);
    for id in ["gapp", "gpod"] {
        c.remove(id);
    }
    c.assert_clean(&["gpod", "gapp", "gshort"]);
}

fn sandbox_killed_by_user(version: &str, build: &str) {
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, build);
    let events = c.events();
    pod(&c, &cfg, "kpod", "134217728");
    join(&c, &cfg, "kpod", "kapp", &["/bin/sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(300));
    let ls = String::from_utf8_lossy(&c.ctr(&["task", "ls"]).stdout).to_string();
    let pid: i32 = ls
        .lines()
        .find(|l| l.starts_with("kpod "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("sandbox pid in {ls}"));
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for id in ["kpod", "kapp"] {
        assert_oom_story(&events, id, false, 137);
    }
    for id in ["kapp", "kpod"] {
        c.remove(id);
    }
    c.assert_clean(&["kpod", "kapp"]);
}

/// Connects to a SOCK_SEQPACKET socket, sends `packets`, and returns how
/// many bytes came back (0: closed without an answer, i.e. refused).
fn connect_and_send(path: &str, packets: &[&[u8]]) -> isize {
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as u16;
        for (i, b) in path.bytes().enumerate() {
            addr.sun_path[i] = b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
        let r = libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect {path}: {}", std::io::Error::last_os_error());
        for p in packets {
            libc::send(
                fd,
                p.as_ptr() as *const libc::c_void,
                p.len(),
                libc::MSG_NOSIGNAL,
            );
        }
        let mut buf = [0u8; 64];
        let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
        libc::close(fd);
        n
    }
}

/// runsc behind a wrapper that, after `runsc create` of a sandbox, runs
/// `trace-inject` on its pod init config: a descendant of the shim, so an
/// admitted peer whose malformed packets reach the parser.
fn injecting_runsc_config(c: &Containerd, build: &str) -> String {
    let wrapper = c.dir.join("runsc-inject");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\"{real}\" \"$@\"\nrc=$?\ncfg=\nfor a in \"$@\"; do case \"$a\" in --pod-init-config=*) cfg=\"${{a#*=}}\";; esac; done\n\
             case \" $* \" in *\" create \"*) [ -n \"$cfg\" ] && \"{inject}\" \"$cfg\" >>\"{log}\" 2>&1;; esac\nexit $rc\n",
            real = runsc_binary(build).display(),
            inject = env!("CARGO_BIN_EXE_trace-inject"),
            log = c.dir.join("trace-inject.log").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    installed_runsc_toml(
        &c.dir.join(format!("runsc-inject-{build}.toml")),
        build,
        &wrapper,
        Some(&c.dir.join("runsc-root")),
        "",
    )
    .display()
    .to_string()
}

/// containerd's bundle of a container.
fn bundle(c: &Containerd, id: &str) -> PathBuf {
    c.dir
        .join("state/io.containerd.runtime.v2.task")
        .join(&c.namespace)
        .join(id)
}

/// The socket the shim says it listens on for `id`'s sandbox, and the
/// endpoint it gave runsc.
fn monitoring_socket(c: &Containerd, id: &str) -> (PathBuf, String) {
    let needle = format!("gvisor sandbox={id}: trace listening at ");
    let log = c.log();
    let line = log
        .lines()
        .find_map(|l| l.split(&needle).nth(1))
        .unwrap_or_else(|| panic!("the shim logs {id}'s monitoring socket"));
    let (path, rest) = line.split_once(" (endpoint ").unwrap();
    let endpoint = rest.split_once(", ").unwrap().0;
    (PathBuf::from(path), endpoint.to_string())
}

fn wait_for_log(c: &Containerd, needle: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !c.log().contains(needle) {
        assert!(std::time::Instant::now() < deadline, "no log line: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The socket is in a 0700 directory of the bundle (through the shim's
/// descriptor when the bundle is too long for sun_path), only descendants of
/// the shim are heard, malformed packets from them are dropped, a foreign
/// peer is refused and logged, and the directory goes with the container.
fn monitoring_socket_is_private(version: &str, build: &str) {
    use std::os::unix::fs::MetadataExt;
    let c = Containerd::start(version);
    let cfg = injecting_runsc_config(&c, build);
    let events = c.events();
    // A short id, and a 64-hex one as CRI makes (its bundle path is longer
    // than sun_path).
    let long = format!("{:064x}", 0x6d6f6eu64 + build.len() as u64);
    for id in ["g-mon", long.as_str()] {
        let out = run_gvisor(&c, &cfg, id, &[], &["/bin/sleep", "1000"], true);
        assert_ok(&out, "run -d");
        let (socket, endpoint) = monitoring_socket(&c, id);
        let dir = bundle(&c, id).join("gvisor-monitor");
        assert_eq!(socket, dir.join("trace.sock"), "in the bundle");
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, 0), "{dir:?}");
        assert!(socket.exists());
        if socket.as_os_str().len() <= 107 {
            assert_eq!(endpoint, socket.display().to_string());
        } else {
            assert!(
                endpoint.starts_with("/proc/") && endpoint.len() <= 107,
                "{endpoint}"
            );
        }
        // The wrapper's injector (a descendant of the shim) was admitted and
        // its two bad packets dropped; this test process is refused.
        wait_for_log(
            &c,
            &format!("gvisor sandbox={id}: malformed trace packet dropped"),
            "the injected packet",
        );
        let answer = connect_and_send(&endpoint, &[&[0x08, 0x01]]);
        assert!(answer <= 0, "a foreign peer got a handshake answer");
        wait_for_log(
            &c,
            &format!(
                "gvisor sandbox={id}: trace connection refused: pid={}",
                std::process::id()
            ),
            "the refused peer",
        );
        // The container is unaffected and still answers.
        let out = c.ctr(&["task", "exec", "--exec-id", "e1", id, "/bin/true"]);
        assert_exit(&out, 0, "exit status");
        c.remove(id);
        assert_oom_story(&events, id, false, 137);
        let verdict = c
            .log()
            .lines()
            .find(|l| l.contains(&format!("verdict id={id}")))
            .map(str::to_string)
            .unwrap_or_default();
        assert!(
            verdict.contains("gvisor_stream(started=true")
                && verdict.contains("malformed=2")
                && verdict.contains("refused=1"),
            "the sandbox's stream was heard: {verdict}"
        );
        assert!(!dir.exists(), "{dir:?} left after delete");
    }
    c.assert_clean(&["g-mon", &long]);
}

/// A shim killed -9: containerd's `delete` removes the socket directory.
fn monitoring_socket_after_shim_killed(version: &str, build: &str) {
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, build);
    let out = run_gvisor(&c, &cfg, "g-dead", &[], &["/bin/sleep", "1000"], true);
    assert_ok(&out, "run -d");
    let (socket, _) = monitoring_socket(&c, "g-dead");
    assert!(socket.exists());
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ls = String::from_utf8_lossy(&c.ctr(&["task", "ls"]).stdout).to_string();
        if !ls.contains("g-dead") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task still listed: {ls}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        c.log().contains("cleaning up dead shim"),
        "containerd cleaned up through delete"
    );
    // The dead shim's delete (run by containerd) removes the directory;
    // containerd removes the bundle right after (so
    // `delete_removes_a_dead_shims_monitoring_directory` shows it was delete).
    let dir = socket.parent().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{dir:?} left after the dead shim's delete"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ok(&c.ctr(&["container", "rm", "g-dead"]), "container rm");
    c.assert_clean(&["g-dead"]);
}

/// The `delete` action containerd runs after a shim died removes the
/// monitoring socket directory the shim left in the bundle (run here by
/// hand: under containerd the bundle goes right after, hiding who did it).
#[test]
fn delete_removes_a_dead_shims_monitoring_directory() {
    let bundle = oomguard_integration::harness::instance_dir("dead-bundle");
    let dir = bundle.join("gvisor-monitor");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("trace.sock")).unwrap();
    std::fs::write(dir.join("pod-init.json"), "{}").unwrap();
    let out = std::process::Command::new(
        oomguard_integration::harness::shim_dir().join("containerd-shim-oomguard-v2"),
    )
    .args([
        "-namespace",
        "dead",
        "-id",
        "dead-shim-test",
        "-address",
        "/nonexistent",
    ])
    .arg("-bundle")
    .arg(&bundle)
    .arg("delete")
    .output()
    .unwrap();
    assert_ok(&out, "delete");
    assert!(!out.stdout.is_empty(), "a DeleteResponse on stdout");
    assert!(!dir.exists(), "{dir:?} left by delete");
    assert!(bundle.exists(), "the bundle itself is containerd's");
    std::fs::remove_dir_all(&bundle).unwrap();
}

/// What CRI adds to every container and `ctr` does not: cgroupfs at
/// /sys/fs/cgroup. gVisor (>= 20231218) gives a container a memory cgroup of
/// its own in the sandbox only when its spec has this mount.
const CGROUP_MOUNT: &str =
    "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev";
const MIB64: &str = "67108864";

/// A container joining `pod`, detached or in the foreground.
fn join_with(
    c: &Containerd,
    cfg: &str,
    pod: &str,
    id: &str,
    opts: &[&str],
    cmd: &[&str],
    detach: bool,
) -> std::process::Output {
    let sandbox = format!("io.kubernetes.cri.sandbox-id={pod}");
    let mut all = vec![
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        &sandbox,
    ];
    all.extend_from_slice(opts);
    run_gvisor(c, cfg, id, &all, cmd, detach)
}

/// `ctr task metrics ID`: memory.usage_in_bytes and memory.limit_in_bytes.
fn memory_metrics(c: &Containerd, id: &str) -> (u64, u64) {
    let out = c.ctr(&["task", "metrics", id]);
    assert_ok(&out, "ctr task metrics");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let value = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    (
        value("memory.usage_in_bytes"),
        value("memory.limit_in_bytes"),
    )
}

fn log_lines(c: &Containerd, needle: &str) -> Vec<String> {
    c.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A pod without a pod limit whose containers have their own 64 MiB
/// limits: under runsc 20240729 a container over its own limit is killed
/// alone (TaskOOM, then exit 137) and its neighbours live on; 20221219 keeps
/// no per-container usage, so the shim says once per container that it
/// cannot enforce the limit, and does not guess from the pod's total.
fn own_memory_limits_in_a_pod(version: &str, build: &str) {
    let enforced = build != "20221219";
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, build);
    let events = c.events();
    let sandbox = "io.kubernetes.cri.sandbox-id=lpod";
    let out = run_gvisor(
        &c,
        &cfg,
        "lpod",
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            sandbox,
        ],
        &["/bin/sleep", "1000"],
        true,
    );
    assert_ok(&out, "sandbox");
    let limited = ["--memory-limit", MIB64, "--mount", CGROUP_MOUNT];
    let out = join_with(
        &c,
        &cfg,
        "lpod",
        "la",
        &limited,
        &["/bin/sleep", "1000"],
        true,
    );
    assert_ok(&out, "la");
    // Limited, but without cgroupfs: no memory cgroup of its own.
    let out = join_with(
        &c,
        &cfg,
        "lpod",
        "lc",
        &["--memory-limit", MIB64],
        &["/bin/sleep", "1000"],
        true,
    );
    assert_ok(&out, "lc");

    // B: 300 MB in one read() under a 64 MiB limit.
    let dd300 = [
        "/bin/dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=300M",
        "count=1",
    ];
    let out = join_with(&c, &cfg, "lpod", "lb", &limited, &dd300, false);
    if enforced {
        assert_exit(&out, 137, "B over its own limit");
        assert_oom_story(&events, "lb", true, 137);
        let verdict = log_lines(&c, "verdict id=lb own_limit:");
        assert_eq!(verdict.len(), 1, "{verdict:?}");
        assert!(
            verdict[0].contains("limit=67108864")
                && verdict[0].contains("source=gvisor_memcg(/lb via "),
            "{verdict:?}"
        );
    } else {
        assert_exit(&out, 0, "B: runsc 20221219 cannot enforce its limit");
        assert_oom_story(&events, "lb", false, 0);
    }
    // Under its limit: a clean exit either way.
    let dd30 = [
        "/bin/dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=30M",
        "count=1",
    ];
    let out = join_with(&c, &cfg, "lpod", "lfit", &limited, &dd30, false);
    assert_exit(&out, 0, "under its own limit");
    assert_oom_story(&events, "lfit", false, 0);
    // No limit of its own: the pod's total grows, nobody else is blamed.
    let out = join_with(
        &c,
        &cfg,
        "lpod",
        "lfree",
        &["--mount", CGROUP_MOUNT],
        &dd300,
        false,
    );
    assert_exit(&out, 0, "no limit of its own");
    assert_oom_story(&events, "lfree", false, 0);

    // A lives on, answers, and reports its own memory.
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "alive",
        "la",
        "/bin/echo",
        "alive",
    ]);
    assert_exit(&out, 0, "exec in A");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    assert!(!events.topics("la").contains(&"/tasks/oom".to_string()));
    let (usage, limit) = memory_metrics(&c, "la");
    let (pod_usage, _) = memory_metrics(&c, "lpod");
    if enforced {
        assert_eq!(limit, 67108864, "A's own limit");
        assert!(usage > 0 && usage < 16 << 20, "A's own usage {usage}");
        assert!(
            pod_usage > usage,
            "the sandbox's memcg {pod_usage} vs A's {usage}"
        );
        // An exec that takes A over its limit: the whole of A goes.
        let out = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "hog",
            "la",
            "/bin/sh",
            "-c",
            "dd if=/dev/zero bs=100M count=1 | sleep 30",
        ]);
        assert_exit(&out, 137, "the exec that took A over its limit");
        assert_oom_story(&events, "la", true, 137);
    } else {
        // 20221219: the sandbox's memcg, as before (no limit there).
        assert_ne!(
            limit, 67108864,
            "A's own limit cannot be reported: {usage} {pod_usage}"
        );
    }

    let cannot = log_lines(&c, "cannot be enforced");
    let count = |id: &str| {
        cannot
            .iter()
            .filter(|l| l.contains(&format!("own-limit id={id} ")))
            .count()
    };
    if enforced {
        assert_eq!(count("lc"), 1, "{cannot:#?}");
        assert!(
            cannot[0].contains("no memory cgroup in its sandbox"),
            "{cannot:#?}"
        );
        assert_eq!(cannot.len(), 1, "{cannot:#?}");
    } else {
        for id in ["la", "lc", "lb", "lfit"] {
            assert_eq!(count(id), 1, "{id}: {cannot:#?}");
        }
        assert_eq!(count("lfree"), 0, "no limit, nothing to say");
        assert!(cannot[0].contains("runsc 20221219 keeps no memory usage per container"));
    }
    assert!(
        !events.topics("lpod").contains(&"/tasks/oom".to_string()),
        "the pod lives on"
    );
    let out = c.ctr(&["task", "exec", "--exec-id", "e2", "lc", "/bin/true"]);
    assert_exit(&out, 0, "exec in C");
    for id in ["la", "lc", "lpod"] {
        c.remove(id);
    }
    c.assert_clean(&["lpod", "la", "lc", "lb", "lfit", "lfree"]);
}
