//! Host memory pressure on cgroup v1: the warning before a global OOM kill.
//!
//! On cgroup v1 a global (host-wide) OOM kill of a container process moves
//! the container's `oom_kill` counter but fires no memcg eventfd; only the
//! kernel log says so at once. Rather than every shim reading every kernel
//! log record, the log is read while the host is short of memory: an
//! eventfd on the root memcg's `memory.pressure_level` (registered through
//! `cgroup.event_control`) arms the kernel log reader for a window, and the
//! kill record it reads (before or after the arming: the reader resumes
//! where it stopped) wakes the watch of the container it names.
//!
//! Why the root memcg, `local` mode: the kernel computes vmpressure for the
//! memcg whose limit is reclaiming, and for a global reclaim only for the
//! root (a container's own registration hears nothing of it); `local` keeps
//! the root's listener out of the events of containers reclaiming at their
//! own limits (their OOMs have their own eventfd). Why `critical`: global
//! reclaim of page cache (kswapd on any busy host) raises `low` hundreds of
//! times a second; `critical` means reclaim is failing, which a global OOM
//! always follows.

use std::io;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use log::{info, trace, warn};

use super::event_control::MemcgEvent;
use super::kmsg;

/// The level and mode registered on the root memcg.
pub const LEVEL: &str = "critical,local";

/// How long the kernel log is read after the last pressure event (the kill
/// follows the failing reclaim by up to seconds; the events come again for
/// as long as reclaim keeps failing).
pub const WINDOW: Duration = Duration::from_secs(10);

/// One `memory.pressure_level` registration.
pub struct PressureLevel(MemcgEvent);

impl PressureLevel {
    /// Registers `level` ("low|medium|critical[,default|hierarchy|local]")
    /// on the v1 memcg directory `dir`.
    pub fn register(dir: &Path, level: &str) -> io::Result<PressureLevel> {
        MemcgEvent::register(dir, "memory.pressure_level", Some(level)).map(PressureLevel)
    }

    /// Resolves at the next event(s); returns how many the kernel counted.
    pub async fn next(&self) -> io::Result<u64> {
        self.0.next().await
    }
}

/// Starts listening for host memory pressure on the v1 memory hierarchy
/// mounted at `root` (idempotent: one registration per shim).
pub fn start(root: &Path) {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_err() {
        return;
    }
    match PressureLevel::register(root, LEVEL) {
        Ok(p) => {
            info!(
                "pressure: {LEVEL} on {}: the kernel log is read for {WINDOW:?} after host memory pressure (global OOM kills on cgroup v1)",
                root.display()
            );
            tokio::spawn(run(p));
        }
        Err(e) => warn!(
            "pressure: cannot listen on {}/memory.pressure_level ({e}); a global OOM kill of a container process is seen at its exit only",
            root.display()
        ),
    }
}

async fn run(p: PressureLevel) {
    loop {
        match p.next().await {
            Ok(n) => {
                if kmsg::arm_for(WINDOW, kmsg::Reason::Pressure) {
                    info!("pressure: host memory pressure {LEVEL} (x{n}); reading the kernel log for {WINDOW:?} after the last event");
                } else {
                    trace!("pressure: host memory pressure {LEVEL} (x{n}); the kernel log is read {WINDOW:?} longer");
                }
            }
            Err(e) => {
                warn!("pressure: listener failed ({e}); a global OOM kill of a container process is seen at its exit only");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registration on this host's root memcg and on a fresh child is
    /// accepted, and an idle child hears nothing.
    #[tokio::test]
    async fn registers_on_a_real_memcg() {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("memory.pressure_level").exists() {
            eprintln!("no cgroup v1 memory controller here; skipped");
            return;
        }
        PressureLevel::register(root, LEVEL).unwrap();
        let dir = root.join(format!("oomguard-pressure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = PressureLevel::register(&dir, "critical,local").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), p.next())
                .await
                .is_err(),
            "an idle memcg under pressure"
        );
        let e = PressureLevel::register(&dir, "bogus").err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        drop(p);
        std::fs::remove_dir(&dir).unwrap();
    }
}
