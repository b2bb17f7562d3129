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

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use log::{info, trace, warn};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;

use super::kmsg;

/// The level and mode registered on the root memcg.
pub const LEVEL: &str = "critical,local";

/// How long the kernel log is read after the last pressure event (the kill
/// follows the failing reclaim by up to seconds; the events come again for
/// as long as reclaim keeps failing).
pub const WINDOW: Duration = Duration::from_secs(10);

/// One `memory.pressure_level` registration.
pub struct PressureLevel {
    fd: AsyncFd<OwnedFd>,
    _level_file: File,
}

impl PressureLevel {
    /// Registers `level` ("low|medium|critical[,default|hierarchy|local]")
    /// on the v1 memcg directory `dir`.
    pub fn register(dir: &Path, level: &str) -> io::Result<PressureLevel> {
        let level_file = File::open(dir.join("memory.pressure_level"))?;
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        let efd: OwnedFd = efd.into();
        let line = format!("{} {} {level}", efd.as_raw_fd(), level_file.as_raw_fd());
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.event_control"))?
            .write_all(line.as_bytes())?;
        Ok(PressureLevel {
            // SAFETY: the descriptor is owned here and registered once.
            fd: unsafe { AsyncFd::register(efd) }.map_err(|e| e.into_parts().1)?,
            _level_file: level_file,
        })
    }

    /// Resolves at the next event(s); returns how many the kernel counted.
    pub async fn next(&self) -> io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8];
            match nix::unistd::read(self.fd.get_ref(), &mut buf) {
                Ok(8) => return Ok(u64::from_ne_bytes(buf)),
                Ok(_) => return Ok(1),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
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
