//! The OOM verdict under runc on this cgroup v1 host, against real
//! containerd 1.6, 1.7 and 2.x: the order of /tasks/oom and /tasks/exit as a
//! containerd event subscriber sees it, and the exit status ctr reports.

use std::path::PathBuf;
use std::time::Duration;

use oomguard_integration::harness::{
    assert_exit, assert_ok, assert_oom_story, rootfs, Containerd, RUNTIME,
};

use oomguard_integration::on_every_containerd;

on_every_containerd!(
    init_oom,
    child_oom_then_exit_0,
    child_oom_with_oom_group_off,
    child_oom_while_init_lives,
    limit_on_parent_cgroup_only,
    oom_before_start,
    clean_exits_and_user_kills_are_not_oom,
    exec_oom_then_clean_exec,
    twenty_ooming_at_once,
    storm_behind_a_barrier,
);

const LIMIT: &str = "33554432"; // 32 MiB
const DD: &str = "dd if=/dev/zero of=/dev/null bs=100M count=1";

fn init_oom(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    let out = c.run(
        RUNTIME,
        "init-oom",
        &["--memory-limit", LIMIT],
        &["/bin/sh", "-c", DD],
    );
    assert_exit(&out, 137, "exit status");
    assert_oom_story(&events, "init-oom", true, 137);
    let log = c.log();
    let verdict = log
        .lines()
        .find(|l| l.contains("verdict id=init-oom"))
        .unwrap_or_else(|| panic!("no verdict line in containerd's log"));
    for evidence in [
        "oom_killed=true",
        "wait_status=\"killed by SIGKILL\"",
        "exit_status=137",
        "counter=1",
    ] {
        assert!(verdict.contains(evidence), "{evidence} missing: {verdict}");
    }
    c.assert_clean(&["init-oom"]);
}

fn child_oom_then_exit_0(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    let cmd = format!("{DD}; exit 0");
    let out = c.run(
        RUNTIME,
        "child-oom",
        &["--memory-limit", LIMIT],
        &["/bin/sh", "-c", &cmd],
    );
    assert_exit(&out, 137, "oom_group (default on) makes it 137");
    assert_oom_story(&events, "child-oom", true, 137);
    c.assert_clean(&["child-oom"]);
}

fn config_file(c: &Containerd, name: &str, body: &str) -> String {
    let path: PathBuf = c.dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn child_oom_with_oom_group_off(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    let cmd = format!("{DD}; exit 0");
    let cfg = config_file(&c, "no-group.toml", "oom_group = false\n");
    let out = c.run(
        RUNTIME,
        "no-group",
        &["--memory-limit", LIMIT, "--runtime-config-path", &cfg],
        &["/bin/sh", "-c", &cmd],
    );
    assert_exit(&out, 0, "the init's own status stands");
    assert_oom_story(&events, "no-group", true, 0);
    assert!(
        c.log().contains("oom_group off keeps its status"),
        "the log says why"
    );
    // The per-container annotation wins over the shim-wide default.
    let out = c.run(
        RUNTIME,
        "no-group-annot",
        &[
            "--memory-limit",
            LIMIT,
            "--annotation",
            "io.oomguard.oom-group=false",
        ],
        &["/bin/sh", "-c", &cmd],
    );
    assert_exit(&out, 0, "exit status");
    assert_oom_story(&events, "no-group-annot", true, 0);
    c.assert_clean(&["no-group", "no-group-annot"]);
}

fn child_oom_while_init_lives(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    // oom_group on: the OOM kill of a child takes the whole container down.
    let cmd = format!("{DD}; sleep 1000");
    let out = c.run(
        RUNTIME,
        "group-kill",
        &["--memory-limit", LIMIT],
        &["/bin/sh", "-c", &cmd],
    );
    assert_exit(&out, 137, "exit status");
    assert_oom_story(&events, "group-kill", true, 137);
    // oom_group off: TaskOOM when the child dies, the init lives on.
    c.run_detached(
        "lives-on",
        &[
            "--memory-limit",
            LIMIT,
            "--annotation",
            "io.oomguard.oom-group=false",
        ],
        &["/bin/sh", "-c", &cmd],
    );
    events
        .wait_for("lives-on", "/tasks/oom", Duration::from_secs(10))
        .expect("TaskOOM while the init runs");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        events
            .init_exit("lives-on", Duration::from_millis(10))
            .is_none(),
        "init still running"
    );
    assert_ok(
        &c.ctr(&["task", "kill", "-s", "SIGKILL", "lives-on"]),
        "kill",
    );
    assert_oom_story(&events, "lives-on", true, 137);
    c.remove("lives-on");
    c.assert_clean(&["group-kill", "lives-on"]);
}

/// A memcg of the v1 hierarchy that the test owns.
struct ParentMemcg(PathBuf);

impl ParentMemcg {
    fn new(name: &str, limit: &str) -> ParentMemcg {
        let dir = PathBuf::from("/sys/fs/cgroup/memory").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), limit).unwrap();
        ParentMemcg(dir)
    }
}

impl Drop for ParentMemcg {
    fn drop(&mut self) {
        // runc made the child in every hierarchy, v2's unified one too.
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup").unwrap();
        for ctl in hierarchies.flatten() {
            let base = ctl.path().join(self.0.file_name().unwrap());
            if let Ok(rd) = std::fs::read_dir(&base) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&base);
        }
    }
}

fn limit_on_parent_cgroup_only(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    let name = format!(
        "oomguard-parent-{}-{}",
        version.replace('.', "-"),
        std::process::id()
    );
    let _parent = ParentMemcg::new(&name, LIMIT);
    let cgroup = format!("/{name}/child");
    let out = c.run(
        RUNTIME,
        "parent-limit",
        &["--cgroup", &cgroup],
        &["/bin/sh", "-c", DD],
    );
    assert_exit(&out, 137, "exit status");
    assert_oom_story(&events, "parent-limit", true, 137);
    c.assert_clean(&["parent-limit"]);
}

fn oom_before_start(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    // Created, not started: something in the container's memcg fills it
    // (as a prestart hook that joined it would). The victim is reported as
    // the container's TaskOOM, before Start was ever called.
    let root = rootfs().display().to_string();
    let out = c.ctr(&[
        "container",
        "create",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "16777216",
        "--rootfs",
        &root,
        "early",
        "/bin/sleep",
        "1000",
    ]);
    assert_ok(&out, "container create");
    create_task_only(&c, "early");
    let memcg = PathBuf::from(format!("/sys/fs/cgroup/memory/{}/early", c.namespace));
    assert!(memcg.exists(), "runc create made the memcg");
    let busybox = format!("{root}/bin/busybox");
    let filler = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {busybox} dd if=/dev/zero of=/dev/null bs=64M count=1",
            memcg.display()
        ))
        .status()
        .unwrap();
    assert!(!filler.success(), "the OOM killer took the filler");
    events
        .wait_for("early", "/tasks/oom", Duration::from_secs(10))
        .expect("TaskOOM for an OOM kill in a created, unstarted container");
    c.remove("early");
    c.assert_clean(&["early"]);
}

/// Tasks.Create without Start (ctr only offers both at once).
fn create_task_only(c: &Containerd, id: &str) {
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::CreateTaskRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = containerd_client::connect(&c.socket)
            .await
            .expect("connect containerd");
        let mut client = TasksClient::new(channel);
        let mut req = containerd_client::tonic::Request::new(CreateTaskRequest {
            container_id: id.to_string(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("containerd-namespace", c.namespace.parse().unwrap());
        client.create(req).await.expect("Tasks.Create");
    });
}

fn clean_exits_and_user_kills_are_not_oom(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    for (id, cmd, code) in [("ok-0", "exit 0", 0), ("ok-1", "exit 1", 1)] {
        let out = c.run(
            RUNTIME,
            id,
            &["--memory-limit", LIMIT],
            &["/bin/sh", "-c", cmd],
        );
        assert_exit(&out, code, "exit status");
        assert_oom_story(&events, id, false, code as u64);
    }
    c.run_detached(
        "user-kill",
        &["--memory-limit", LIMIT],
        &["/bin/sleep", "1000"],
    );
    assert_ok(
        &c.ctr(&["task", "kill", "-s", "SIGKILL", "user-kill"]),
        "kill",
    );
    assert_oom_story(&events, "user-kill", false, 137);
    c.remove("user-kill");
    // A re-run under the same id after an OOM: no stale OOMKilled.
    let out = c.run(
        RUNTIME,
        "again",
        &["--memory-limit", LIMIT],
        &["/bin/sh", "-c", DD],
    );
    assert_exit(&out, 137, "exit status");
    assert_oom_story(&events, "again", true, 137);
    let before = events.topics("again").len();
    let out = c.run(
        RUNTIME,
        "again",
        &["--memory-limit", LIMIT],
        &["/bin/sh", "-c", "exit 0"],
    );
    assert_exit(&out, 0, "exit status");
    std::thread::sleep(Duration::from_millis(300));
    let second: Vec<String> = events.topics("again")[before..].to_vec();
    assert!(
        !second.contains(&"/tasks/oom".to_string()),
        "stale OOM on a clean re-run: {second:?}"
    );
    c.assert_clean(&["ok-0", "ok-1", "user-kill", "again"]);
}

fn exec_oom_then_clean_exec(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    c.run_detached(
        "ex-oom",
        &[
            "--memory-limit",
            LIMIT,
            "--annotation",
            "io.oomguard.oom-group=false",
        ],
        &["/bin/sleep", "1000"],
    );
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "hog",
        "ex-oom",
        "/bin/sh",
        "-c",
        DD,
    ]);
    assert_exit(&out, 137, "the exec's own status");
    let oom = events
        .wait_for("ex-oom", "/tasks/oom", Duration::from_secs(10))
        .expect("TaskOOM for the exec's kill");
    assert_eq!(oom.container(), "ex-oom");
    let out = c.ctr(&["task", "exec", "--exec-id", "fine", "ex-oom", "/bin/true"]);
    assert_exit(&out, 0, "exit status");
    let fine = events
        .wait_for_exit_of("ex-oom", "fine", Duration::from_secs(5))
        .unwrap();
    assert_eq!(fine.exit_status(), 0);
    let ooms = events
        .topics("ex-oom")
        .iter()
        .filter(|t| *t == "/tasks/oom")
        .count();
    assert_eq!(
        ooms,
        1,
        "one OOM episode, one TaskOOM: {:?}",
        events.topics("ex-oom")
    );
    c.remove("ex-oom");
    c.assert_clean(&["ex-oom"]);
}

fn twenty_ooming_at_once(version: &str) {
    let c = Containerd::start(version);
    let events = c.events();
    std::thread::scope(|s| {
        for i in 0..20 {
            let c = &c;
            s.spawn(move || {
                let id = format!("oom-{i}");
                let out = c.run(
                    RUNTIME,
                    &id,
                    &["--memory-limit", LIMIT],
                    &["/bin/sh", "-c", DD],
                );
                assert_exit(&out, 137, &id);
            });
        }
    });
    for i in 0..20 {
        assert_oom_story(&events, &format!("oom-{i}"), true, 137);
    }
    let ids: Vec<String> = (0..20).map(|i| format!("oom-{i}")).collect();
    c.assert_clean(&ids.iter().map(String::as_str).collect::<Vec<_>>());
}

/// An OOM storm: containers released from one barrier at the same moment,
/// so their memcgs enter OOM together and the kernel's OOM killer (one lock
/// for all) kills them one after the other. More than 10 at once: the
/// kernel then rate-limits its OOM report (`oom-kill:` records included)
/// and only the kill lines remain. Every container: one TaskOOM before its
/// TaskExit, 137. (Timed, 200 at once beside the stock shim: `make bench`.)
fn storm_behind_a_barrier(version: &str) {
    const N: usize = 30;
    let c = Containerd::start(version);
    let events = c.events();
    // A FIFO held open for reading and writing: a container's `read` blocks
    // until the release writes its byte, whenever it got there.
    let barrier = c.dir.join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    let fifo = barrier.join("go");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0, "mkfifo");
    let mut go = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let mount = format!(
        "type=bind,src={},dst=/b,options=rbind:rw",
        barrier.display()
    );
    let cmd = format!("read x < /b/go; exec {DD}");
    let ids: Vec<String> = (0..N).map(|i| format!("storm-{i}")).collect();
    std::thread::scope(|s| {
        for chunk in ids.chunks(N / 3) {
            let (c, mount, cmd) = (&c, &mount, &cmd);
            s.spawn(move || {
                for id in chunk {
                    c.run_detached(
                        id,
                        &["--memory-limit", LIMIT, "--mount", mount],
                        &["/bin/sh", "-c", cmd],
                    );
                }
            });
        }
    });
    // Every init blocked in its read of the barrier, then the release.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.ctr(&["task", "ls"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let waiting = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                    .is_ok_and(|w| w.contains("poll") || w.contains("pipe"))
            })
            .count();
        if waiting == N {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} of {N} containers at the barrier after 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    use std::io::Write;
    go.write_all(&[b'\n'; N]).unwrap();
    for id in &ids {
        assert_oom_story(&events, id, true, 137);
    }
    for id in &ids {
        c.remove(id);
    }
    c.assert_clean(&ids.iter().map(String::as_str).collect::<Vec<_>>());
}
