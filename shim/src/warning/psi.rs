//! cgroup v2's memory pressure: a PSI trigger on the memcg's
//! `memory.pressure` ("some STALL_US WINDOW_US", written to the file held
//! open, which then polls POLLPRI whenever some task stalled on memory for
//! that long within a window). The kernel counts; the shim sleeps.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The window a stall is measured in: two seconds (a kernel that counts
/// the shim unprivileged for PSI, as 6.18 here does, takes only multiples
/// of 2 s).
pub const WINDOW_US: u64 = 2_000_000;

/// The trigger line for a stall `share` of the window.
pub fn trigger(share: f64) -> String {
    let stall = ((share.clamp(0.0, 1.0) * WINDOW_US as f64) as u64).clamp(1, WINDOW_US);
    format!("some {stall} {WINDOW_US}")
}

pub struct PsiTrigger(AsyncFd<File>);

impl PsiTrigger {
    /// Registers a trigger for `share` of each window stalled on `file`
    /// (a memcg's `memory.pressure`, or `/proc/pressure/memory`).
    pub fn register(file: &Path, share: f64) -> io::Result<PsiTrigger> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(file)?;
        let line = trigger(share);
        // The kernel overwrites the write's last byte with a NUL.
        f.write_all(format!("{line}\0").as_bytes()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: trigger {line:?}: {e}", file.display()),
            )
        })?;
        // SAFETY: the file is owned by the AsyncFd and registered once.
        unsafe { AsyncFd::register_with_interest(f, Interest::PRIORITY) }
            .map(PsiTrigger)
            .map_err(|e| e.into_parts().1)
    }

    /// Resolves at the next trigger (the kernel signals at most once per
    /// window while the stall lasts).
    pub async fn next(&self) -> io::Result<()> {
        let mut guard = self.0.ready(Interest::PRIORITY).await?;
        guard.clear_ready();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_lines() {
        assert_eq!(trigger(0.1), "some 200000 2000000");
        assert_eq!(trigger(1.0), "some 2000000 2000000");
        assert_eq!(trigger(0.0), "some 1 2000000");
    }

    /// The kernel accepts the line (the host-wide file has the same format
    /// as a v2 memcg's), and an idle trigger stays quiet.
    #[tokio::test]
    async fn the_kernel_takes_the_trigger() {
        let file = Path::new("/proc/pressure/memory");
        if !file.exists() {
            eprintln!("no PSI here; skipped");
            return;
        }
        let t = PsiTrigger::register(file, 0.9).expect("trigger accepted");
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), t.next()).await;
        assert!(quiet.is_err(), "a 90% stall trigger fired on this host");
        let e = PsiTrigger::register(Path::new("/proc/pressure/nope"), 0.1).err();
        assert!(e.is_some());
    }
}
