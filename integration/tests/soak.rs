//! Soak (`make test-soak`, not in `make test`): create/start/exec/OOM/delete
//! over and over under containerd 1.7, 1000 times with runc and 200 with
//! runsc, measuring at the start, the middle and the end what a leak would
//! grow: the shim's fds and RSS, mounts, cgroups, runtime state, shim
//! sockets in /run/containerd/s. Each cycle must also tell the truth
//! (TaskOOM before TaskExit 137). Figures go to stderr and
//! `.cache/soak/results.md`.
//!
//! runc: the containers join one pod (CRI sandbox-id annotation), so one
//! long-lived shim serves all 1000 and its own growth is measured. runsc:
//! an OOM kills the whole sandbox, so each cycle is a sandbox of its own
//! and a shim of its own, measured at the same point of every cycle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oomguard_integration::harness::{
    assert_exit, assert_ok, assert_oom_story, repo, rootfs, Containerd, RUNTIME,
};

fn cycles(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What is measured at each checkpoint.
#[derive(Debug, Clone, Default)]
struct Sample {
    cycle: usize,
    shim_fds: usize,
    shim_rss_kib: u64,
    shims: usize,
    mounts: usize,
    cgroups: usize,
    runtime_state: usize,
    shim_sockets: usize,
    rootfs_entries: usize,
    elapsed_s: f64,
}

fn count_dir(path: &Path) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Child cgroups (directories) of a cgroup directory.
fn count_subdirs(path: &Path) -> usize {
    std::fs::read_dir(path)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

/// The shim's open descriptors: the least of five looks over half a second,
/// so a runtime command's pipes caught in flight are not counted.
fn fds(pid: i32) -> usize {
    (0..5)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            count_dir(Path::new(&format!("/proc/{pid}/fd")))
        })
        .min()
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The shim socket containerd derives for (namespace, group id): sha256 of
/// "ADDRESS/NS/ID" (hack/README.md).
fn shim_socket(c: &Containerd, id: &str) -> PathBuf {
    let key = format!("{}/{}/{}", c.socket.display(), c.namespace, id);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("printf %s \"$1\" | sha256sum")
        .arg("sh")
        .arg(&key)
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    PathBuf::from("/run/containerd/s").join(hex.split_whitespace().next().unwrap())
}

struct Soak<'a> {
    c: &'a Containerd,
    /// Group ids whose shim sockets are looked for.
    groups: Vec<String>,
    runtime_root: PathBuf,
    rootfs: PathBuf,
    start: Instant,
}

impl Soak<'_> {
    fn sample(&self, cycle: usize, shim: Option<i32>) -> Sample {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.c.dir.display().to_string();
        let ns_cgroups: usize = [
            "memory", "pids", "cpu", "cpuacct", "freezer", "devices", "blkio",
        ]
        .iter()
        .map(|ctl| {
            count_subdirs(
                &Path::new("/sys/fs/cgroup")
                    .join(ctl)
                    .join(&self.c.namespace),
            )
        })
        .sum();
        Sample {
            cycle,
            shim_fds: shim.map(fds).unwrap_or(0),
            shim_rss_kib: shim.map(rss_kib).unwrap_or(0),
            shims: self.c.shim_pids().len(),
            mounts: mounts
                .lines()
                .filter(|l| l.contains(&dir) || l.contains(&self.c.namespace))
                .count(),
            cgroups: ns_cgroups,
            runtime_state: count_dir(&self.runtime_root),
            shim_sockets: self
                .groups
                .iter()
                .filter(|g| shim_socket(self.c, g).exists())
                .count(),
            rootfs_entries: count_dir(&self.rootfs),
            elapsed_s: self.start.elapsed().as_secs_f64(),
        }
    }
}

fn table(title: &str, samples: &[Sample]) -> String {
    let mut out = format!(
        "\n{title}\n\n| cycle | shim fds | shim RSS KiB | shims | mounts | cgroups | runtime state | shim sockets | rootfs entries | elapsed s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for s in samples {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            s.cycle,
            s.shim_fds,
            s.shim_rss_kib,
            s.shims,
            s.mounts,
            s.cgroups,
            s.runtime_state,
            s.shim_sockets,
            s.rootfs_entries,
            s.elapsed_s
        ));
    }
    out
}

/// Fails if anything grew from the first checkpoint to the last. RSS may
/// move by allocator noise: 10% plus 512 KiB.
fn assert_flat(what: &str, samples: &[Sample]) {
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let grew = |name: &str, a: usize, b: usize| {
        assert!(b <= a, "{what}: {name} grew from {a} to {b}: {samples:#?}");
    };
    grew("shim fds", first.shim_fds, last.shim_fds);
    grew("shims", first.shims, last.shims);
    grew("mounts", first.mounts, last.mounts);
    grew("cgroups", first.cgroups, last.cgroups);
    grew("runtime state", first.runtime_state, last.runtime_state);
    grew("shim sockets", first.shim_sockets, last.shim_sockets);
    grew("rootfs entries", first.rootfs_entries, last.rootfs_entries);
    assert!(
        last.shim_rss_kib <= first.shim_rss_kib + first.shim_rss_kib / 10 + 512,
        "{what}: shim RSS grew from {} to {} KiB: {samples:#?}",
        first.shim_rss_kib,
        last.shim_rss_kib
    );
}

fn report(text: &str) {
    eprintln!("{text}");
    let dir = repo().join(".cache/soak");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("results.md");
    let mut all = std::fs::read_to_string(&path).unwrap_or_default();
    all.push_str(text);
    let _ = std::fs::write(path, all);
}

#[test]
#[ignore = "make test-soak (about 40 minutes)"]
fn soak_runc_pod_1000() {
    let n = cycles("OOMGUARD_SOAK_RUNC", 1000);
    let c = Containerd::start("1.7");
    let events = c.events();
    let root = rootfs().display().to_string();
    let pod = "soakpod";
    let sandbox = format!("io.kubernetes.cri.sandbox-id={pod}");
    let run = |id: &str, kind: &str, extra: &[&str], cmd: &[&str]| {
        let kind = format!("io.kubernetes.cri.container-type={kind}");
        let mut args = vec![
            "run",
            "-d",
            "--null-io",
            "--runtime",
            RUNTIME,
            "--annotation",
            &kind,
            "--annotation",
            &sandbox,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", &root, id]);
        args.extend_from_slice(cmd);
        assert_ok(&c.ctr(&args), &format!("run {id}"));
    };
    run(pod, "sandbox", &[], &["/bin/sleep", "100000"]);
    let shim = c.shim_pids()[0];
    let soak = Soak {
        c: &c,
        groups: vec![pod.to_string()],
        runtime_root: PathBuf::from(format!("/run/containerd/runc/{}", c.namespace)),
        rootfs: rootfs(),
        start: Instant::now(),
    };
    let checkpoints = [10.min(n), n / 2, n];
    let mut samples = Vec::new();
    for i in 0..=n {
        if checkpoints.contains(&i) && samples.iter().all(|s: &Sample| s.cycle != i) {
            samples.push(soak.sample(i, Some(shim)));
            eprintln!("{:?}", samples.last().unwrap());
        }
        if i == n {
            break;
        }
        let id = format!("soak-{i}");
        run(
            &id,
            "container",
            &["--memory-limit", "33554432"],
            &["/bin/sleep", "100000"],
        );
        let out = c.ctr(&["task", "exec", "--exec-id", "ok", &id, "/bin/true"]);
        assert_exit(&out, 0, &format!("{id}: exec /bin/true"));
        let out = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "oom",
            &id,
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=100M count=1",
        ]);
        assert_exit(&out, 137, &format!("{id}: exec OOM"));
        assert_oom_story(&events, &id, true, 137);
        assert_ok(
            &c.ctr(&["task", "delete", &id]),
            &format!("{id}: task delete"),
        );
        assert_ok(
            &c.ctr(&["container", "rm", &id]),
            &format!("{id}: container rm"),
        );
    }
    assert_eq!(
        c.shim_pids(),
        vec![shim],
        "one shim served the pod throughout"
    );
    report(&table(
        &format!("runc, containerd 1.7: {n} cycles in one pod's shim (pid {shim})"),
        &samples,
    ));
    assert_flat("runc", &samples);
    c.remove(pod);
}

#[test]
#[ignore = "make test-soak (about 40 minutes)"]
fn soak_runsc_200() {
    let n = cycles("OOMGUARD_SOAK_RUNSC", 200);
    let c = Containerd::start("1.7");
    let events = c.events();
    let runsc_root = c.dir.join("runsc-root");
    let cfg = oomguard_integration::gvisor::installed_runsc_toml(
        &c.dir.join("runsc.toml"),
        "20240729",
        &repo().join(".cache/runsc/20240729/bin/runsc"),
        Some(&runsc_root),
        "",
    )
    .display()
    .to_string();
    // A private copy: gVisor keeps its filestore in the rootfs directory.
    let own = c.dir.join("rootfs-soak");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&own)
        .status()
        .unwrap();
    assert!(status.success());
    let root = own.display().to_string();
    let ids: Vec<String> = (0..n).map(|i| format!("gsoak-{i}")).collect();
    let mut soak = Soak {
        c: &c,
        groups: Vec::new(),
        runtime_root: runsc_root.clone(),
        rootfs: own.clone(),
        start: Instant::now(),
    };
    let checkpoints = [10.min(n.saturating_sub(1)), n / 2, n.saturating_sub(1)];
    let mut running = Vec::new();
    let mut idle = vec![soak.sample(0, None)];
    for (i, id) in ids.iter().enumerate() {
        let out = c.ctr(&[
            "run",
            "-d",
            "--null-io",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &cfg,
            "--memory-limit",
            "67108864",
            "--rootfs",
            &root,
            id,
            "/bin/sleep",
            "100000",
        ]);
        assert_ok(&out, &format!("run {id}"));
        let out = c.ctr(&["task", "exec", "--exec-id", "ok", id, "/bin/true"]);
        assert_exit(&out, 0, &format!("{id}: exec /bin/true"));
        if checkpoints.contains(&i) {
            // Every cycle has a shim of its own: its size at the same point.
            let shims = c.shim_pids();
            assert_eq!(shims.len(), 1, "{shims:?}");
            running.push(soak.sample(i, Some(shims[0])));
            eprintln!("{:?}", running.last().unwrap());
        }
        let out = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "oom",
            id,
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=200M count=1",
        ]);
        assert_exit(&out, 137, &format!("{id}: exec in an OOM-killed sandbox"));
        assert_oom_story(&events, id, true, 137);
        assert_ok(
            &c.ctr(&["task", "delete", id]),
            &format!("{id}: task delete"),
        );
        assert_ok(
            &c.ctr(&["container", "rm", id]),
            &format!("{id}: container rm"),
        );
        if i + 1 == n / 2 || i + 1 == n {
            soak.groups = ids[..=i].to_vec();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !c.shim_pids().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            idle.push(soak.sample(i + 1, None));
            eprintln!("{:?}", idle.last().unwrap());
        }
    }
    report(&format!(
        "{}{}",
        table(
            &format!("runsc 20240729, containerd 1.7: {n} sandboxes, one shim each, measured after the exec"),
            &running
        ),
        table("runsc: between cycles (no container)", &idle)
    ));
    assert_flat("runsc per-cycle shim", &running);
    assert_flat("runsc between cycles", &idle);
}
