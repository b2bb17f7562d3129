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
use super::memcg::{key_values, Memcg};

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

/// The memcg's shmem in bytes, from `memory.stat`: v1's hierarchical
/// `total_shmem` where the kernel keeps it, else `shmem` (v2's is
/// hierarchical). `None` when the file has neither line.
pub fn shmem(memcg: &Memcg) -> io::Result<Option<u64>> {
    let file = memcg.path().join("memory.stat");
    let text = std::fs::read_to_string(&file)?;
    parse_shmem(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", file.display()),
        )
    })
}

pub fn parse_shmem(stat: &str) -> Result<Option<u64>, String> {
    let pairs = key_values(stat)?;
    let find = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    Ok(find("total_shmem").or_else(|| find("shmem")))
}

/// One v1 usage threshold registration.
pub struct Threshold(MemcgEvent);

impl Threshold {
    /// Registers `bytes` on a v1 memcg. v2: `ErrorKind::Unsupported`.
    #[cfg(test)]
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

    /// [`arm`](Self::arm) on a blocking thread: the kernel waits for an RCU
    /// grace period (tens of ms) in each registration, and the shim's one
    /// runtime thread must not.
    pub async fn arm_off_runtime(memcg: &Memcg, bytes: u64) -> io::Result<Threshold> {
        let Memcg::V1(dir) = memcg.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cgroup v2 has no usage threshold notification",
            ));
        };
        let detached = tokio::task::spawn_blocking(move || {
            MemcgEvent::register_detached(&dir, "memory.usage_in_bytes", Some(&bytes.to_string()))
        })
        .await
        .map_err(|e| io::Error::other(format!("threshold registration: {e}")))??;
        detached.attach().map(Threshold)
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

    /// `memory.stat` excerpts of this machine's v1 memcg of a gVisor sandbox
    /// (holding a 100 MB container) and of a v2 kernel's.
    #[test]
    fn shmem_lines() {
        let v1 = "cache 107270144\nrss 19083264\nshmem 107163648\nmapped_file 107270144\ntotal_cache 107270144\ntotal_rss 19083264\ntotal_shmem 107167744\n";
        assert_eq!(parse_shmem(v1), Ok(Some(107167744)));
        let v1_flat = "cache 4096\nshmem 8192\n";
        assert_eq!(parse_shmem(v1_flat), Ok(Some(8192)));
        let v2 = "anon 1327104\nfile 139264\nkernel 274432\nshmem 0\nfile_mapped 0\n";
        assert_eq!(parse_shmem(v2), Ok(Some(0)));
        assert_eq!(parse_shmem("cache 1\n"), Ok(None));
        assert!(parse_shmem("shmem lots\n").unwrap_err().contains("shmem"));
    }

    #[test]
    fn v2_has_no_threshold() {
        let e = Threshold::arm(&Memcg::V2("/nonexistent".into()), 1)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    }
}
