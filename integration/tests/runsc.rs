//! gVisor: oomguard delegating to real runsc (ptrace platform) under real
//! containerd, single containers and pods (the CRI annotations runsc reads).

use std::time::Duration;

use oomguard_integration::gvisor::{run_gvisor, runsc_config};
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
    malformed_monitoring_message,
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

/// Connects to a SOCK_SEQPACKET socket, answers nothing, sends `packets`.
fn inject(path: &str, packets: &[&[u8]]) {
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
            let n = libc::send(fd, p.as_ptr() as *const libc::c_void, p.len(), 0);
            assert_eq!(n, p.len() as isize);
        }
        let mut buf = [0u8; 64];
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        );
        std::thread::sleep(Duration::from_millis(200));
        libc::close(fd);
    }
}

fn malformed_monitoring_message(version: &str, build: &str) {
    let c = Containerd::start(version);
    let cfg = runsc_config(&c, build);
    let events = c.events();
    let out = run_gvisor(&c, &cfg, "g-mon", &[], &["/bin/sleep", "1000"], true);
    assert_ok(&out, "run -d");
    let log = c.log();
    let path = log
        .lines()
        .find_map(|l| l.split("trace listening at ").nth(1))
        .map(|p| p.trim_end_matches('"').trim().to_string())
        .expect("the shim logs its monitoring socket");
    // A handshake (version 1), then a header claiming 60000 header bytes,
    // then a container-start with a broken protobuf body.
    inject(
        &path,
        &[
            &[0x08, 0x01],
            &[0x60, 0xea, 0x01, 0, 0, 0, 0, 0],
            &[8, 0, 1, 0, 0, 0, 0, 0, 0x0a, 0xff, 0xff],
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !c.log().contains("malformed trace packet dropped") {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line for the malformed packet"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The container is unaffected and still answers.
    let out = c.ctr(&["task", "exec", "--exec-id", "e1", "g-mon", "/bin/true"]);
    assert_exit(&out, 0, "exit status");
    c.remove("g-mon");
    assert_oom_story(&events, "g-mon", false, 137);
    let verdict = c
        .log()
        .lines()
        .find(|l| l.contains("verdict id=g-mon"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(verdict.contains("gvisor_stream(started=true"), "{verdict}");
    c.assert_clean(&["g-mon"]);
}
