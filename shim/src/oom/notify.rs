//! Kernel notifications that a memcg hit OOM: an eventfd registered on
//! `memory.oom_control` (v1) or inotify on `memory.events` (v2). Both are
//! descriptors in the shim's epoll set: no polling.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use super::event_control::MemcgEvent;
use super::memcg::Memcg;

pub enum Notifier {
    V1(MemcgEvent),
    /// inotify on `memory.events`.
    V2(AsyncFd<OwnedFd>),
}

impl Notifier {
    pub fn new(memcg: &Memcg) -> io::Result<Notifier> {
        match memcg {
            Memcg::V1(dir) => Self::v1(dir),
            Memcg::V2(dir) => Self::v2(dir),
        }
    }

    /// v1: `cgroup.event_control` ← "<eventfd> <memory.oom_control fd>".
    /// The kernel signals the OOMing memcg and all its descendants, so a
    /// limit on a parent (pod) memcg is seen here too; it also signals once
    /// when the memcg is removed.
    fn v1(dir: &Path) -> io::Result<Notifier> {
        Ok(Notifier::V1(MemcgEvent::register(
            dir,
            "memory.oom_control",
            None,
        )?))
    }

    /// v2: `memory.events` is rewritten (IN_MODIFY) whenever a counter moves.
    fn v2(dir: &Path) -> io::Result<Notifier> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(io::Error::from)?;
        inotify
            .add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)
            .map_err(io::Error::from)?;
        let fd: OwnedFd = inotify.into();
        // SAFETY: the descriptor is owned here and registered once.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Notifier::V2(fd))
    }

    /// Resolves at the next notification (several coalesce into one).
    pub async fn next(&self) -> io::Result<()> {
        let fd = match self {
            Notifier::V1(event) => return event.next().await.map(drop),
            Notifier::V2(fd) => fd,
        };
        loop {
            let mut guard = fd.readable().await?;
            let mut buf = [0u8; 4096];
            let mut got = false;
            loop {
                match nix::unistd::read(fd.get_ref(), &mut buf) {
                    Ok(0) => break,
                    Ok(_) => got = true,
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// inotify on a real file in the memory.events format: a rewrite wakes
    /// the notifier (the v2 path without a v2 host).
    #[tokio::test]
    async fn v2_wakes_on_memory_events_rewrite() {
        let dir = std::env::temp_dir().join(format!("oomguard-v2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("memory.events");
        std::fs::write(
            &events,
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        )
        .unwrap();
        let n = Notifier::new(&Memcg::V2(dir.clone())).unwrap();
        let waiter = tokio::spawn(async move { n.next().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "no change yet");
        std::fs::write(
            &events,
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let m = Memcg::V2(dir.clone());
        assert_eq!(m.oom_counters().unwrap().kills, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// v1 on this host: a real memcg, a real eventfd registration, and the
    /// removal signal the kernel sends when the memcg goes away.
    #[tokio::test]
    async fn v1_registration_on_a_real_memcg() {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("cgroup.event_control").exists() {
            eprintln!("no cgroup v1 memory controller here; skipped");
            return;
        }
        let dir = root.join(format!("oomguard-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = Notifier::new(&Memcg::V1(dir.clone())).unwrap();
        let waiter = tokio::spawn(async move { n.next().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        std::fs::remove_dir(&dir).unwrap();
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
