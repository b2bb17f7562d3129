//! t0: this process's own notification that a memcg entered OOM, the same
//! signal a shim can have at the earliest; then, reading the counter every
//! ~0.1 ms, the moment the kill shows in it: the earliest a shim that
//! publishes only a confirmed kill can know.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The memcg directory of cgroup path `path` (`/parent/id`): the v1 memory
/// hierarchy when this host has one, else the unified hierarchy.
pub fn dir(path: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let rel = path.trim_start_matches('/');
    if v1.join("cgroup.procs").exists() {
        v1.join(rel)
    } else {
        Path::new("/sys/fs/cgroup").join(rel)
    }
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A counter of `memory.events` (v2) or `memory.oom_control` (v1).
fn counter(dir: &Path, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
        })
        .unwrap_or(0)
}

fn oom_count(dir: &Path) -> u64 {
    counter(dir, "memory.events", "oom")
}

/// The OOM kill counter.
fn kill_count(dir: &Path, v1: bool) -> u64 {
    if v1 {
        counter(dir, "memory.oom_control", "oom_kill")
    } else {
        counter(dir, "memory.events", "oom_kill")
    }
}

/// When a memcg entered OOM, and when its kill counter moved (`None`: not
/// within 2 s of the notification).
#[derive(Debug, Clone, Copy)]
pub struct OomTimes {
    pub notified: Instant,
    pub killed: Option<Instant>,
}

/// Registers now; the receiver gets the instant of the first OOM
/// notification and of the kill counter's move after it (or nothing within
/// `timeout`).
pub fn watch_oom(dir: &Path, timeout: Duration) -> Result<Receiver<OomTimes>, String> {
    let (tx, rx) = channel();
    let v1 = dir.join("memory.oom_control").exists();
    // SAFETY: plain syscalls; every descriptor is owned right after it is made.
    let fd = unsafe {
        if v1 {
            libc::eventfd(0, libc::EFD_CLOEXEC)
        } else {
            libc::inotify_init1(libc::IN_CLOEXEC)
        }
    };
    if fd < 0 {
        return Err(errno("eventfd/inotify"));
    }
    // SAFETY: fd was just created and is owned only here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut keep = None;
    if v1 {
        let oc = std::fs::File::open(dir.join("memory.oom_control"))
            .map_err(|e| format!("{}/memory.oom_control: {e}", dir.display()))?;
        std::fs::write(
            dir.join("cgroup.event_control"),
            format!("{} {}", fd.as_raw_fd(), oc.as_raw_fd()),
        )
        .map_err(|e| format!("{}/cgroup.event_control: {e}", dir.display()))?;
        keep = Some(oc);
    } else {
        let path = CString::new(dir.join("memory.events").as_os_str().as_encoded_bytes())
            .map_err(|_| "memcg path with NUL".to_string())?;
        // SAFETY: fd is an inotify descriptor, path a valid C string.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) } < 0 {
            return Err(errno(&format!("inotify {}/memory.events", dir.display())));
        }
    }
    let base = oom_count(dir);
    let kills0 = kill_count(dir, v1);
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _keep = keep;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if n <= 0 {
                return;
            }
            let at = Instant::now();
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer of that size.
            unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if v1 || oom_count(&dir) > base {
                // Read the counter every ~0.1 ms (a sleep between reads
                // leaves the CPU to the OOMing task and the shims).
                let until = at + Duration::from_secs(2);
                let killed = loop {
                    if kill_count(&dir, v1) > kills0 {
                        break Some(Instant::now());
                    }
                    if Instant::now() > until {
                        break None;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                };
                let _ = tx.send(OomTimes {
                    notified: at,
                    killed,
                });
                return;
            }
        }
    });
    Ok(rx)
}
