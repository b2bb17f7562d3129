//! A memcg's usage, and a kernel notification when it crosses a level.
//!
//! cgroup v1 notifies: an eventfd registered through `cgroup.event_control`
//! as "<eventfd> <fd of memory.usage_in_bytes> <bytes>" is signalled when
//! the usage crosses `bytes` either way (checked every few hundred KiB of
//! charges), and once when the memcg is removed. Closing the eventfd ends the
//! registration. cgroup v2 has no such notification (PSI triggers fire on
//! stalls, i.e. only near the memcg's own limit; `memory.high` would throttle
//! the workload): there the caller reads `memory.current` on a timer.

use std::io;

use super::event_control::MemcgEvent;
use super::memcg::Memcg;

/// The memcg's current usage in bytes (v1 `memory.usage_in_bytes`, v2
/// `memory.current`).
pub fn usage(memcg: &Memcg) -> io::Result<u64> {
    let file = match memcg {
        Memcg::V1(p) => p.join("memory.usage_in_bytes"),
        Memcg::V2(p) => p.join("memory.current"),
    };
    let text = std::fs::read_to_string(&file)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a byte count: {:?}", file.display(), text.trim()),
        )
    })
}

/// One v1 usage threshold registration.
pub struct Threshold(MemcgEvent);

impl Threshold {
    /// Registers `bytes` on a v1 memcg. v2: `ErrorKind::Unsupported`.
    pub fn arm(memcg: &Memcg, bytes: u64) -> io::Result<Threshold> {
        let Memcg::V1(dir) = memcg else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cgroup v2 has no usage threshold notification",
            ));
        };
        let bytes = bytes.to_string();
        MemcgEvent::register(dir, "memory.usage_in_bytes", Some(&bytes)).map(Threshold)
    }

    /// Resolves when the usage has crossed the level (or the memcg went away).
    pub async fn crossed(&self) -> io::Result<()> {
        self.0.next().await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;
    use std::time::Duration;

    /// A real v1 memcg on this host: a threshold above the usage does not
    /// fire; charging memory past it does, and so does dropping back below.
    #[tokio::test]
    async fn v1_threshold_fires_when_crossed() {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("cgroup.event_control").exists() {
            eprintln!("no cgroup v1 memory controller here; skipped");
            return;
        }
        let dir = root.join(format!("oomguard-threshold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let memcg = Memcg::V1(dir.clone());
        // A child that joins the memcg, fills a tmpfs-backed memfd with 32
        // MiB when told, and exits when told again.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs; read go; head -c 33554432 /dev/zero > /dev/shm/oomguard-threshold-$$; read done; rm -f /dev/shm/oomguard-threshold-$$",
                dir.display()
            ))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let before = usage(&memcg).unwrap();
        let t = Threshold::arm(&memcg, before + (16 << 20)).unwrap();
        let waiter = tokio::spawn(async move {
            t.crossed().await.unwrap();
            t
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "fired below the level");
        writeln!(stdin, "go").unwrap();
        let t = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("no notification after charging 32 MiB")
            .unwrap();
        let now = usage(&memcg).unwrap();
        assert!(
            now >= before + (16 << 20),
            "fired at {now}, armed at {}",
            before + (16 << 20)
        );
        writeln!(stdin, "done").unwrap();
        child.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(5), t.crossed())
            .await
            .expect("no notification when usage fell back")
            .unwrap();
        drop(t);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn v2_has_no_threshold() {
        let e = Threshold::arm(&Memcg::V2("/nonexistent".into()), 1)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    }
}
