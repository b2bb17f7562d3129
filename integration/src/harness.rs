//! Private containerd instances (started by `hack/containerd.sh`) and the
//! observations tests make through them: ctr, the event stream, leftovers.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const RUNTIME: &str = "io.containerd.oomguard.v2";
pub const STOCK_RUNTIME: &str = "io.containerd.runc.v2";

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// Runs `hack/SCRIPT ARGS...` and returns its stdout, trimmed; a failure
/// panics with `what` and the script's stderr.
pub fn hack<S: AsRef<OsStr>>(script: &str, args: &[S], what: &str) -> String {
    hack_env(script, args, &[], what)
}

/// `hack` with extra environment variables.
pub fn hack_env<S: AsRef<OsStr>>(
    script: &str,
    args: &[S],
    env: &[(&str, &OsStr)],
    what: &str,
) -> String {
    let out = Command::new(repo().join("hack").join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run hack/{script}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `hack/SCRIPT start VERSION DIR WITH` (the daemon scripts' common
/// form; WITH is the shim directory or the containerd socket) and returns
/// what it printed; panics with `what` and its stderr if it fails.
pub fn hack_start(script: &str, version: &str, dir: &Path, with: &Path, what: &str) -> String {
    hack_start_env(script, version, dir, with, &[], what)
}

/// `hack_start` with extra environment variables.
pub fn hack_start_env(
    script: &str,
    version: &str,
    dir: &Path,
    with: &Path,
    env: &[(&str, &OsStr)],
    what: &str,
) -> String {
    hack_env(
        script,
        &[
            OsStr::new("start"),
            version.as_ref(),
            dir.as_ref(),
            with.as_ref(),
        ],
        env,
        what,
    )
}

/// Runs `hack/SCRIPT stop DIR` for a teardown, whatever comes of it.
pub fn hack_stop(script: &str, dir: &Path) {
    let _ = Command::new(repo().join("hack").join(script))
        .arg("stop")
        .arg(dir)
        .output();
}

/// A number no other call in this test process gets (directory and object
/// names).
pub fn unique() -> usize {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A directory of its own for one private daemon of this test process.
pub fn instance_dir(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/tmp/oomguard-it/{name}-{}-{}",
        std::process::id(),
        unique()
    ))
}

/// Where the shim under test is: `OOMGUARD_SHIM_DIR`, else `target/debug`.
pub fn shim_dir() -> PathBuf {
    let shim_dir = std::env::var("OOMGUARD_SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/debug"));
    assert!(
        shim_dir.join("containerd-shim-oomguard-v2").exists(),
        "build the shim first (cargo build): {} has no containerd-shim-oomguard-v2",
        shim_dir.display()
    );
    shim_dir
}

/// The busybox rootfs made by `hack/rootfs.sh`.
pub fn rootfs() -> PathBuf {
    PathBuf::from(hack::<&str>("rootfs.sh", &[], "hack/rootfs.sh"))
}

/// The containerd versions the product supports, as `hack/` names them.
pub const VERSIONS: [&str; 3] = ["1.6", "1.7", "2"];

pub struct Containerd {
    pub version: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub namespace: String,
    ctr: PathBuf,
    stopped: bool,
}

impl Containerd {
    pub fn start(version: &str) -> Containerd {
        let dir = instance_dir(version);
        hack_start(
            "containerd.sh",
            version,
            &dir,
            &shim_dir(),
            &format!("containerd {version} did not start"),
        );
        Containerd {
            version: version.to_string(),
            socket: dir.join("containerd.sock"),
            ctr: repo().join(format!(".cache/containerd/{version}/bin/ctr")),
            // Its own namespace, named after its directory: runc's state
            // root and ctr's cgroup paths are named by it, so tests running
            // at once never share a container's state or memcg, and
            // containerd.sh stop removes the namespace's empty cgroup parents
            // without pulling one from under another instance's runc create.
            namespace: format!("oomguard-{}", dir.file_name().unwrap().to_string_lossy()),
            dir,
            stopped: false,
        }
    }

    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// Runs ctr with a deadline; returns its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = self.ctr_command();
        cmd.args(args).stdin(Stdio::null());
        run_with_timeout(cmd, Duration::from_secs(60))
    }

    /// `ctr run --rm` in the foreground under `runtime`; returns the output.
    pub fn run(&self, runtime: &str, id: &str, opts: &[&str], cmd: &[&str]) -> Output {
        let root = rootfs();
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        args.extend_from_slice(opts);
        let root = root.to_string_lossy().to_string();
        args.extend_from_slice(&["--rootfs", &root, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `ctr run -d` (detached) under oomguard.
    pub fn run_detached(&self, id: &str, opts: &[&str], cmd: &[&str]) {
        let root = rootfs();
        let root = root.to_string_lossy().to_string();
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--rootfs", &root, id]);
        args.extend_from_slice(cmd);
        let out = self.ctr(&args);
        assert_ok(&out, &format!("ctr run -d {id}"));
    }

    pub fn events(&self) -> Events {
        Events::subscribe(self)
    }

    /// A subscription through `containerd-shim-oomguard-v2 events --json`,
    /// which (unlike ctr) shows oomguard's own `/oomguard/*` events; live
    /// when this returns.
    pub fn oomguard_events(&self) -> Events {
        Events::oomguard(self)
    }

    /// Kills, deletes and removes a container (best effort).
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = self.ctr(&["task", "delete", id]);
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || err.contains("not found") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr(&["container", "rm", id]);
    }

    /// `ctr task ls` as (id, pid, status).
    pub fn tasks(&self) -> Vec<(String, i32, String)> {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((
                    w.next()?.to_string(),
                    w.next()?.parse().ok()?,
                    w.next()?.to_string(),
                ))
            })
            .collect()
    }

    /// The host pid of a running task's init.
    pub fn task_pid(&self, id: &str) -> i32 {
        let tasks = self.tasks();
        tasks
            .iter()
            .find(|t| t.0 == id && t.2 == "RUNNING")
            .unwrap_or_else(|| panic!("{id} is not running: {tasks:?}"))
            .1
    }

    /// The shims still running for this containerd (not an `events`
    /// subscriber, whose `--address` looks alike).
    pub fn shim_pids(&self) -> Vec<i32> {
        let needle = format!(" -address {}", self.socket.display());
        processes()
            .into_iter()
            .filter(|(_, cmd)| {
                cmd.contains("containerd-shim-oomguard-v2")
                    && cmd.contains(&needle)
                    && !cmd.contains("containerd-shim-oomguard-v2 events ")
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Asserts that nothing is left of the given containers: no shim, no
    /// mount, no cgroup, no runc state.
    pub fn assert_clean(&self, ids: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.shim_pids(), Vec::<i32>::new(), "shims left running");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
        assert!(left.is_empty(), "mounts left: {left:#?}");
        for id in ids {
            for ctl in ["memory", "pids", "cpu"] {
                let cg = format!("/sys/fs/cgroup/{ctl}/{}/{id}", self.namespace);
                assert!(!Path::new(&cg).exists(), "cgroup left: {cg}");
            }
            let state = format!("/run/containerd/runc/{}/{id}", self.namespace);
            assert!(!Path::new(&state).exists(), "runc state left: {state}");
            let socket = self.shim_socket(id);
            assert!(!socket.exists(), "shim socket left: {}", socket.display());
        }
    }

    /// The socket of the shim that serves container `id` (one not in a pod):
    /// `/run/containerd/s/` + sha256 of "ADDRESS/NAMESPACE/ID", as
    /// containerd-shim names it.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let key = format!("{}/{}/{id}", self.socket.display(), self.namespace);
        PathBuf::from(format!(
            "/run/containerd/s/{:x}",
            Sha256::digest(key.as_bytes())
        ))
    }

    /// Sends containerd alone `signal` ("KILL" or "TERM") and waits until it
    /// is gone: shims, containers and DIR stay, as after a crash or during
    /// an upgrade (`hack/containerd.sh kill`).
    pub fn kill(&self, signal: &str) {
        hack(
            "containerd.sh",
            &[OsStr::new("kill"), self.dir.as_os_str(), OsStr::new(signal)],
            &format!("containerd {} did not die of SIG{signal}", self.version),
        );
    }

    /// Starts containerd again on the same root and state. With
    /// `hold_events`, the shims already running reach its ttrpc socket only
    /// after `release_events`, so a subscriber can be in place before
    /// anything they queued is published.
    pub fn restart(&self, hold_events: bool) {
        let dir = self.dir.as_os_str();
        let shims = shim_dir();
        hack_env(
            "containerd.sh",
            &[
                OsStr::new("start"),
                OsStr::new(&self.version),
                dir,
                shims.as_os_str(),
            ],
            &[(
                "OOMGUARD_HOLD_EVENTS",
                OsStr::new(if hold_events { "1" } else { "" }),
            )],
            &format!("containerd {} did not restart", self.version),
        );
    }

    /// Lets the shims that were running before a held restart reach
    /// containerd's ttrpc socket.
    pub fn release_events(&self) {
        hack(
            "containerd.sh",
            &[OsStr::new("release-events"), self.dir.as_os_str()],
            "release-events",
        );
    }

    /// Stops containerd (also done on drop).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        hack_stop("containerd.sh", &self.dir);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        show_log_if_failing(&self.dir.join("containerd.log"));
        self.stop();
    }
}

/// Whether process `pid` has ended: no /proc entry, or a zombie (this
/// machine's PID 1 reaps orphans seconds late).
pub fn gone(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // "pid (comm) S ...": comm may hold spaces and parentheses.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
}

/// Waits until every pid is gone; panics with `what` after `timeout`.
pub fn wait_gone(pids: &[i32], timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|p| !gone(*p)) {
        let left: Vec<&i32> = pids.iter().filter(|p| !gone(**p)).collect();
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {timeout:?}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The oom_kill count in a cgroup v1 memcg's `memory.oom_control` (0 when
/// unreadable).
pub fn memcg_oom_kills(memcg: &Path) -> u64 {
    std::fs::read_to_string(memcg.join("memory.oom_control"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `sig` to `pid`, which must exist.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The live processes of the host (zombies left out): pid and command line
/// (its NULs as spaces).
pub fn processes() -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        // "pid (comm) STATE ...": the state follows the last ") ".
        if stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push((pid, cmdline.trim_end().to_string()));
    }
    found
}

/// Live processes whose command line is exactly `cmd`.
pub fn processes_running(cmd: &str) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, c)| c == cmd)
        .map(|(pid, _)| pid)
        .collect()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A failing test shows what containerd and the shim saw (CI keeps only the
/// test's output): the end of `log`, while the test thread is panicking.
pub fn show_log_if_failing(log: &Path) {
    if !std::thread::panicking() {
        return;
    }
    // Gone when an owner (Dockerd) already stopped this instance.
    if let Ok(text) = std::fs::read_to_string(log) {
        eprintln!(
            "--- last {LOG_TAIL} lines of {} ---\n{}",
            log.display(),
            tail(&text, LOG_TAIL)
        );
    }
}

/// Lines of containerd's log shown when a test fails.
const LOG_TAIL: usize = 80;

pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let done = Arc::new(Mutex::new(false));
    let flag = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if *flag.lock().unwrap() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let out = child.wait_with_output().expect("wait for command");
    *done.lock().unwrap() = true;
    let _ = watchdog.join();
    out
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `ctr run` exited with: ctr exits with the task's exit status.
pub fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Asserts ctr's exit code; on a mismatch shows what ctr printed (ctr exits
/// 1 for its own errors, which only its stderr tells apart).
#[track_caller]
pub fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        exit_code(out),
        code,
        "{what}:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One event as `ctr events` prints it.
#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub body: serde_json::Value,
    /// When this process read it.
    pub seen_at: Instant,
}

impl Event {
    pub fn container(&self) -> &str {
        self.body
            .get("container_id")
            .or_else(|| self.body.get("id"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }

    pub fn exit_status(&self) -> u64 {
        self.body
            .get("exit_status")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    /// For /tasks/exit: the process id (the container id for the init).
    pub fn process_id(&self) -> &str {
        self.body
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }
}

/// One line of `containerd-shim-oomguard-v2 events --json`.
fn parse_json_event(line: &str) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Event {
        namespace: v.get("namespace")?.as_str()?.to_string(),
        topic: v.get("topic")?.as_str()?.to_string(),
        body: v.get("event").cloned().unwrap_or(serde_json::Value::Null),
        seen_at: Instant::now(),
    })
}

fn parse_event(line: &str) -> Option<Event> {
    // "2026-11-22 07:34:43.957679739 +0000 UTC NAMESPACE TOPIC {json}"
    let rest = line.split_once(" UTC ")?.1;
    let mut parts = rest.splitn(3, ' ');
    let namespace = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let body = parts
        .next()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Some(Event {
        namespace,
        topic,
        body,
        seen_at: Instant::now(),
    })
}

/// The topic of the readiness probes `Events::wait_live` publishes.
const PROBE_TOPIC: &str = "/oomguard/test-probe";

/// A live event subscription: `ctr events`, or oomguard's own `events`
/// command.
pub struct Events {
    child: Child,
    seen: Arc<Mutex<Vec<Event>>>,
    namespace: String,
    /// What the command wrote to stderr (oomguard's: its reconnections).
    stderr: Arc<Mutex<String>>,
}

impl Events {
    fn subscribe(c: &Containerd) -> Events {
        Events::on(&c.version, &c.socket, &c.namespace)
    }

    /// `ctr events` of containerd `version` at `socket`; `of` and the
    /// waits look at `namespace`.
    pub fn on(version: &str, socket: &Path, namespace: &str) -> Events {
        let mut cmd = Command::new(repo().join(format!(".cache/containerd/{version}/bin/ctr")));
        cmd.arg("--address").arg(socket).arg("events");
        let events = Events::spawn(cmd, parse_event, namespace);
        // The subscription must be live before the test acts.
        std::thread::sleep(Duration::from_millis(300));
        events
    }

    /// `containerd-shim-oomguard-v2 events --json` on any containerd (a CRI
    /// one: no probe, a moment to subscribe, as `on` does).
    pub fn oomguard_on(socket: &Path, namespace: &str) -> Events {
        let mut cmd = Command::new(shim_dir().join("containerd-shim-oomguard-v2"));
        cmd.arg("events")
            .arg("--address")
            .arg(socket)
            .arg("--namespace")
            .arg(namespace)
            .arg("--json");
        let events = Events::spawn(cmd, parse_json_event, namespace);
        std::thread::sleep(Duration::from_millis(500));
        events
    }

    fn oomguard(c: &Containerd) -> Events {
        let mut cmd = Command::new(shim_dir().join("containerd-shim-oomguard-v2"));
        cmd.arg("events")
            .arg("--address")
            .arg(&c.socket)
            .arg("--namespace")
            .arg(&c.namespace)
            .arg("--json");
        let events = Events::spawn(cmd, parse_json_event, &c.namespace);
        events.wait_live(c);
        events
    }

    fn spawn(mut cmd: Command, parse: fn(&str) -> Option<Event>, namespace: &str) -> Events {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("events stdout");
        let stderr = child.stderr.take().expect("events stderr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(ev) = parse(&line) {
                    sink.lock().unwrap().push(ev);
                }
            }
        });
        let errors = Arc::new(Mutex::new(String::new()));
        let err_sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = err_sink.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Events {
            child,
            seen,
            namespace: namespace.to_string(),
            stderr: errors,
        }
    }

    /// Returns once the subscription is live: containerd answers a
    /// subscription only with its first event, so the probe is an event
    /// (published with `containerd publish`, what shims publish through,
    /// with a body of a type nobody knows) that this subscriber must show.
    /// Panics after 20 s.
    pub fn wait_live(&self, c: &Containerd) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // An Any whose type_url (field 1) names no real message.
        let type_url = b"oomguard.test.Probe";
        let mut any = vec![0x0a, type_url.len() as u8];
        any.extend_from_slice(type_url);
        let containerd = repo().join(format!(".cache/containerd/{}/bin/containerd", c.version));
        loop {
            let mut cmd = Command::new(&containerd);
            cmd.arg("--address")
                .arg(&c.socket)
                .args(["publish", "--topic", PROBE_TOPIC, "--namespace"])
                .arg(&c.namespace)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(mut child) = cmd.spawn() {
                if let Some(mut stdin) = child.stdin.take() {
                    use std::io::Write;
                    let _ = stdin.write_all(&any);
                }
                let _ = child.wait();
            }
            let probe = Instant::now();
            while probe.elapsed() < Duration::from_millis(500) {
                if self
                    .seen
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|e| e.topic == PROBE_TOPIC)
                {
                    self.seen.lock().unwrap().retain(|e| e.topic != PROBE_TOPIC);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "the events subscription is not live after 20 s; its stderr: {}",
                self.stderr()
            );
        }
    }

    /// What the subscriber wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The task events (and oomguard's own) of one container, in the order
    /// containerd published them.
    pub fn of(&self, id: &str) -> Vec<Event> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e.namespace == self.namespace
                    && (e.topic.starts_with("/tasks/") || e.topic.starts_with("/oomguard/"))
                    && e.container() == id
            })
            .cloned()
            .collect()
    }

    pub fn topics(&self, id: &str) -> Vec<String> {
        self.of(id).into_iter().map(|e| e.topic).collect()
    }

    /// Waits until `id` has an event with `topic`.
    pub fn wait_for(&self, id: &str, topic: &str, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.of(id).into_iter().find(|e| e.topic == topic) {
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The init's exit event (not an exec's).
    pub fn init_exit(&self, id: &str, timeout: Duration) -> Option<Event> {
        self.wait_for_exit_of(id, id, timeout)
    }

    /// The exit event of process `process` (an exec id, or `id` for the init).
    pub fn wait_for_exit_of(&self, id: &str, process: &str, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self
                .of(id)
                .into_iter()
                .find(|e| e.topic == "/tasks/exit" && e.process_id() == process)
            {
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the TaskOOM/TaskExit story of one container: whether a TaskOOM
/// came, that it came before the init's TaskExit, and the exit status.
pub fn assert_oom_story(events: &Events, id: &str, expect_oom: bool, expect_status: u64) {
    let exit = events
        .init_exit(id, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{id}: no /tasks/exit; events: {:?}", events.topics(id)));
    let topics = events.topics(id);
    let oom_at = topics.iter().position(|t| t == "/tasks/oom");
    let exit_at = events
        .of(id)
        .iter()
        .position(|e| e.topic == "/tasks/exit" && e.process_id() == id);
    if expect_oom {
        let (Some(o), Some(x)) = (oom_at, exit_at) else {
            panic!("{id}: expected /tasks/oom before /tasks/exit, got {topics:?}");
        };
        assert!(o < x, "{id}: /tasks/oom after /tasks/exit: {topics:?}");
        assert_eq!(
            topics.iter().filter(|t| *t == "/tasks/oom").count(),
            1,
            "{id}: one TaskOOM expected: {topics:?}"
        );
    } else {
        assert_eq!(oom_at, None, "{id}: unexpected /tasks/oom: {topics:?}");
    }
    assert_eq!(
        exit.exit_status(),
        expect_status,
        "{id}: exit status; events {topics:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_event_lines() {
        let e = parse_event(r#"2026-11-22 07:34:44.546332822 +0000 UTC default /tasks/exit {"container_id":"d1","id":"e1","pid":22045,"exit_status":5}"#).unwrap();
        assert_eq!(
            (
                e.namespace.as_str(),
                e.topic.as_str(),
                e.container(),
                e.exit_status(),
                e.process_id()
            ),
            ("default", "/tasks/exit", "d1", 5, "e1")
        );
        let e = parse_event(
            "2026-11-22 07:34:43.88 +0000 UTC default /containers/create {\"id\":\"d1\"}",
        )
        .unwrap();
        assert_eq!(e.container(), "d1");
    }

    #[test]
    fn parses_oomguard_json_lines() {
        let e = parse_json_event(r#"{"timestamp":"2026-12-05T13:11:13.217016995Z","namespace":"ns1","topic":"/oomguard/oom","type":"oomguard.events.v1.OOMKill","event":{"container_id":"web","victim_pid":8101}}"#).unwrap();
        assert_eq!(
            (e.namespace.as_str(), e.topic.as_str(), e.container()),
            ("ns1", "/oomguard/oom", "web")
        );
        assert_eq!(e.body["victim_pid"], 8101);
        let e = parse_json_event(r#"{"timestamp":"-","namespace":"ns1","topic":"/oomguard/test-probe","type":"x","event":null,"error":"type not known (0 bytes)"}"#).unwrap();
        assert_eq!(e.container(), "");
        assert!(parse_json_event("not json").is_none());
    }
}
