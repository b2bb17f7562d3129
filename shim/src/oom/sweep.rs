//! Killing every process of a container straight from its memcg.
//!
//! `runc kill --all` is a Go binary that costs tens of milliseconds of CPU
//! a run; in an OOM storm (200 containers at once on 2 cores) the shims'
//! runs of it took seconds. A container of host processes (runc) has them
//! all in its memcg: `cgroup.procs` of the memcg and of any memcg below it.
//! Each is opened as a pidfd, checked to be still in the memcg (a pidfd
//! pins its pid, so the check and the signal are about one process), and
//! SIGKILLed through the pidfd. A process that forked before its kill has
//! its child in the memcg by the time it exits, so the sweep waits for what
//! it killed and reads the memcg again, until a read finds nothing new.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use oomguard_runtimes::pidfd;

use super::memcg::{memcg_rel, Memcg};

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Processes signalled.
    pub killed: usize,
    /// Processes still in the memcg when the time ran out.
    pub left: usize,
}

/// How deep below the container's memcg processes are looked for.
const MAX_DEPTH: usize = 8;

/// Whether a sweep of the memcg `rel` (as `/proc/PID/cgroup` names it) for
/// container `id` is safe: never the root, never a memcg that holds the
/// shim itself, and only a memcg that is the container's own: one whose
/// path names it (every runtime convention does: `/NS/ID`, `/docker/ID`,
/// `kubepods/.../ID`, `cri-containerd-ID.scope`), so a memcg shared with
/// other containers is left to the runtime.
pub fn sweepable(rel: &str, own_rel: &str, id: &str) -> Result<(), String> {
    let rel = rel.trim_end_matches('/');
    if rel.is_empty() {
        return Err("the container's memcg is the root memcg".into());
    }
    if id.is_empty() || !rel.contains(id) {
        return Err(format!("the memcg {rel} does not name the container"));
    }
    if own_rel == rel || own_rel.starts_with(&format!("{rel}/")) {
        return Err(format!("the shim itself lives in {own_rel}, inside {rel}"));
    }
    Ok(())
}

/// The shim's own memcg, as `/proc/self/cgroup` names it.
pub fn own_rel() -> io::Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    memcg_rel(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// SIGKILLs every process in the memcg (and below), until a read of the
/// memcg finds none that was not killed and exited, or `limit` passed.
pub async fn sweep(memcg: &Memcg, rel: &str, limit: Duration) -> io::Result<Swept> {
    let deadline = Instant::now() + limit;
    let mut total = 0;
    loop {
        let mut pids = Vec::new();
        procs(memcg.path(), 0, &mut pids)?;
        let mut killed: Vec<OwnedFd> = Vec::new();
        let mut seen = HashSet::new();
        for pid in pids {
            if !seen.insert(pid) {
                continue;
            }
            let Some(fd) = pidfd::open(pid)? else {
                continue;
            };
            if !belongs(pid, rel) {
                continue;
            }
            if pidfd::send_signal(&fd, libc::SIGKILL)? {
                killed.push(fd);
            }
        }
        if killed.is_empty() {
            return Ok(Swept {
                killed: total,
                left: 0,
            });
        }
        total += killed.len();
        let left = deadline.saturating_duration_since(Instant::now());
        let running = pidfd::wait_fds(&killed, left).await?;
        if running > 0 || Instant::now() >= deadline {
            return Ok(Swept {
                killed: total,
                left: running,
            });
        }
        // Everything killed has exited (its children, if it forked, are in
        // the memcg by now): read again.
    }
}

/// Whether `pid` (pinned by a pidfd) is in the memcg `rel` or below it.
fn belongs(pid: i32, rel: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    let Ok(own) = memcg_rel(&text) else {
        return false;
    };
    let rel = rel.trim_end_matches('/');
    own == rel || own.starts_with(&format!("{rel}/"))
}

/// The pids of `dir`'s `cgroup.procs` and of its sub-cgroups'.
fn procs(dir: &Path, depth: usize, out: &mut Vec<i32>) -> io::Result<()> {
    let text = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(t) => t,
        // Removed meanwhile: nothing left in it.
        Err(e) if e.kind() == io::ErrorKind::NotFound && depth > 0 => return Ok(()),
        Err(e) => return Err(e),
    };
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            procs(&entry.path(), depth + 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn only_the_containers_own_memcg() {
        assert!(sweepable("/", "/user.slice", "abc").is_err());
        assert!(sweepable("", "/x", "abc").is_err());
        assert!(sweepable("/k8s.io/abc", "/k8s.io/abc/shim", "abc").is_err());
        assert!(sweepable("/k8s.io/abc", "/k8s.io/abc", "abc").is_err());
        assert!(sweepable("/k8s.io/abc", "/k8s.io/abcd", "abc").is_ok());
        assert!(sweepable("/default/t1", "/", "t1").is_ok());
        assert!(sweepable("/og/t1/c", "/", "t1").is_ok());
        // A pod-level or shared memcg.
        assert!(sweepable("/kubepods/pod1234", "/", "abc").is_err());
        assert!(sweepable("/default/t1", "/", "").is_err());
    }

    /// A real v1 memcg on this host with a shell that keeps forking
    /// children into it and one child in a memcg below: all are killed, and
    /// a process outside is not.
    #[tokio::test]
    async fn kills_every_process_of_a_real_memcg() {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("cgroup.procs").exists() {
            eprintln!("no cgroup v1 memory controller here; skipped");
            return;
        }
        let name = format!("oomguard-sweep-{}", std::process::id());
        let dir = root.join(&name);
        let sub = dir.join("inner");
        std::fs::create_dir_all(&sub).unwrap();
        let mut outside = Command::new("sleep").arg("100").spawn().unwrap();
        let mut forker = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs; sh -c 'echo $$ > {}/cgroup.procs; exec sleep 100' & while :; do sleep 100 & sleep 0.01; done",
                dir.display(),
                sub.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let memcg = Memcg::V1(dir.clone());
        let mut before = Vec::new();
        procs(&dir, 0, &mut before).unwrap();
        assert!(before.len() >= 3, "{before:?}");
        let swept = sweep(&memcg, &format!("/{name}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(swept.left, 0, "{swept:?}");
        assert!(swept.killed >= 3, "{swept:?}");
        forker.wait().unwrap();
        let mut after = Vec::new();
        procs(&dir, 0, &mut after).unwrap();
        assert!(after.is_empty(), "{after:?}");
        let outside_pid = outside.id() as i32;
        assert!(Path::new(&format!("/proc/{outside_pid}")).exists());
        outside.kill().unwrap();
        outside.wait().unwrap();
        std::fs::remove_dir(&sub).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
