//! cgroup v1 memcg notifications: an eventfd registered through the memcg's
//! `cgroup.event_control` on one of its files (OOM, a usage threshold,
//! memory pressure). The registration lives as long as the eventfd, and
//! the kernel also signals it once when the memcg is removed.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;

/// One registration: the eventfd in the shim's epoll set, and the watched
/// file kept open with it for clarity of ownership.
pub struct MemcgEvent {
    fd: AsyncFd<OwnedFd>,
    _file: File,
}

/// A registration made off the runtime (see [`MemcgEvent::register_detached`]),
/// not yet in the shim's epoll set.
pub struct Detached {
    efd: OwnedFd,
    watched: File,
}

impl Detached {
    /// Puts the eventfd in the runtime's epoll set.
    pub fn attach(self) -> io::Result<MemcgEvent> {
        Ok(MemcgEvent {
            // SAFETY: the descriptor is owned here and registered once.
            fd: unsafe { AsyncFd::register(self.efd) }.map_err(|e| e.into_parts().1)?,
            _file: self.watched,
        })
    }
}

impl MemcgEvent {
    /// Writes "<eventfd> <fd of DIR/FILE>[ ARGS]" to DIR/cgroup.event_control.
    pub fn register(dir: &Path, file: &str, args: Option<&str>) -> io::Result<MemcgEvent> {
        Self::register_detached(dir, file, args)?.attach()
    }

    /// The same, without the runtime: a usage threshold's registration
    /// waits for an RCU grace period in the kernel (7–38 ms measured here,
    /// each), so it is made on a blocking thread.
    pub fn register_detached(dir: &Path, file: &str, args: Option<&str>) -> io::Result<Detached> {
        let watched = File::open(dir.join(file))?;
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        let efd: OwnedFd = efd.into();
        let mut line = format!("{} {}", efd.as_raw_fd(), watched.as_raw_fd());
        if let Some(args) = args {
            line.push(' ');
            line.push_str(args);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.event_control"))?
            .write_all(line.as_bytes())?;
        Ok(Detached { efd, watched })
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
