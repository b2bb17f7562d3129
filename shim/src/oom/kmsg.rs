//! The kernel log (`/dev/kmsg`) names every OOM victim: its pid, command,
//! rss and memcg. It is the only real-time signal for a host-wide (global)
//! OOM kill of a container process on cgroup v1, where no eventfd fires.
//!
//! One reader per shim, from the log's end at start-up; victims are
//! broadcast to every container's watch. Lines are untrusted input.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use log::{trace, warn};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

/// One process the OOM killer took, as the kernel logged it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Victim {
    pub pid: i32,
    pub comm: String,
    /// The memcg the victim lived in, relative to the hierarchy's root.
    pub task_memcg: String,
    /// The memcg that ran out (`None` for a global OOM).
    pub oom_memcg: Option<String>,
    pub anon_rss_kb: Option<u64>,
    pub constraint: String,
}

impl Victim {
    pub fn is_global(&self) -> bool {
        self.oom_memcg.is_none()
    }

    /// Whether the victim lived in the memcg `rel` (or below it).
    pub fn in_memcg(&self, rel: &str) -> bool {
        let rel = rel.trim_end_matches('/');
        let task = self.task_memcg.trim_end_matches('/');
        !rel.is_empty() && (task == rel || task.starts_with(&format!("{rel}/")))
    }
}

/// What one kmsg record says about an OOM kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `oom-kill:constraint=...,task_memcg=...,task=...,pid=...`
    OomKill(Victim),
    /// `...: Killed process PID (COMM) total-vm:..., anon-rss:NkB, ...`
    Killed {
        pid: i32,
        comm: String,
        anon_rss_kb: Option<u64>,
    },
}

/// Parses one `/dev/kmsg` record ("PRI,SEQ,TS,FLAGS;MESSAGE" plus optional
/// continuation lines). `None` for records about anything else, or ones too
/// malformed to trust.
pub fn parse_record(record: &str) -> Option<Record> {
    let message = record.split_once(';').map(|(_, m)| m).unwrap_or(record);
    let message = message.lines().next()?.trim_end();
    if let Some(rest) = message.strip_prefix("oom-kill:") {
        return parse_oom_kill(rest).map(Record::OomKill);
    }
    let idx = message.find("Killed process ")?;
    let rest = &message[idx + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(' ')?;
    let pid: i32 = pid.parse().ok().filter(|p| *p > 0)?;
    let rest = rest.strip_prefix('(')?;
    // The command may itself contain ") ": the last ") total-vm" ends it.
    let end = rest.rfind(") total-vm").or_else(|| rest.rfind(')'))?;
    let comm = rest[..end].to_string();
    let anon_rss_kb = rest[end..]
        .split(", ")
        .find_map(|f| f.trim().strip_prefix("anon-rss:"))
        .and_then(|v| v.trim_end_matches("kB").parse().ok());
    Some(Record::Killed {
        pid,
        comm,
        anon_rss_kb,
    })
}

fn parse_oom_kill(fields: &str) -> Option<Victim> {
    let mut v = Victim::default();
    let mut pid = None;
    let mut task_memcg = None;
    // Values never contain ',' except nodemask's list, which we skip.
    for field in fields.split(',') {
        let (k, val) = field.split_once('=').unwrap_or((field, ""));
        match k {
            "constraint" => v.constraint = val.to_string(),
            "oom_memcg" => v.oom_memcg = Some(val.to_string()),
            "task_memcg" => task_memcg = Some(val.to_string()),
            "task" => v.comm = val.to_string(),
            "pid" => pid = val.parse().ok().filter(|p: &i32| *p > 0),
            _ => {}
        }
    }
    v.pid = pid?;
    v.task_memcg = task_memcg?;
    Some(v)
}

/// Merges records into complete victims: the `oom-kill:` record comes first
/// and names the memcg, the `Killed process` record follows with the rss.
#[derive(Default)]
pub struct Assembler {
    pending: HashMap<i32, Victim>,
}

impl Assembler {
    pub fn push(&mut self, record: Record) -> Option<Victim> {
        match record {
            Record::OomKill(v) => {
                // Keep the map small if the second record never comes.
                if self.pending.len() > 64 {
                    self.pending.clear();
                }
                self.pending.insert(v.pid, v);
                None
            }
            Record::Killed {
                pid,
                comm,
                anon_rss_kb,
            } => {
                let mut v = self.pending.remove(&pid)?;
                if v.comm.is_empty() {
                    v.comm = comm;
                }
                v.anon_rss_kb = anon_rss_kb;
                Some(v)
            }
        }
    }
}

struct KernelLog {
    fd: Option<AsyncFd<OwnedFd>>,
    assembler: Mutex<Assembler>,
    victims: broadcast::Sender<Victim>,
}

static KMSG: OnceLock<KernelLog> = OnceLock::new();

fn kernel_log() -> &'static KernelLog {
    KMSG.get_or_init(|| {
        let fd = match open_at_end() {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!("kmsg: /dev/kmsg not readable ({e}); global OOM kills are seen only in memcg counters at exit");
                None
            }
        };
        KernelLog {
            fd,
            assembler: Mutex::new(Assembler::default()),
            victims: broadcast::channel(256).0,
        }
    })
}

fn open_at_end() -> io::Result<AsyncFd<OwnedFd>> {
    let fd = nix::fcntl::open(
        "/dev/kmsg",
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // Only what happens from now on concerns this shim.
    nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekEnd).map_err(io::Error::from)?;
    // SAFETY: the descriptor is owned here and registered once.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Starts the shim's kernel log reader (idempotent).
pub fn start() {
    let log = kernel_log();
    if log.fd.is_none() {
        return;
    }
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_err() {
        return;
    }
    tokio::spawn(async move {
        let Some(fd) = &log.fd else { return };
        loop {
            match fd.readable().await {
                Ok(mut guard) => {
                    drain_ready(log);
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("kmsg: reader stopped: {e}");
                    return;
                }
            }
        }
    });
}

pub fn subscribe() -> broadcast::Receiver<Victim> {
    kernel_log().victims.subscribe()
}

/// Reads every record available now (the exit path calls this before it
/// decides, so a victim logged just before the reap is not missed).
pub fn drain_now() {
    drain_ready(kernel_log());
}

fn drain_ready(log: &KernelLog) {
    let Some(fd) = &log.fd else { return };
    let mut buf = vec![0u8; 8192];
    loop {
        match nix::unistd::read(fd.get_ref(), &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(record) = parse_record(&text) {
                    let mut asm = log.assembler.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(victim) = asm.push(record) {
                        // Most victims belong to other shims' containers; only
                        // a watch that owns the memcg logs its decision.
                        trace!(
                            "kmsg: oom victim pid={} comm={} task_memcg={} oom_memcg={:?} anon_rss_kb={:?}",
                            victim.pid, victim.comm, victim.task_memcg, victim.oom_memcg, victim.anon_rss_kb
                        );
                        let _ = log.victims.send(victim);
                    }
                }
            }
            // Overwritten records: the read position moved on; keep reading.
            Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(e) => {
                warn!("kmsg: read failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Read off this machine's /dev/kmsg (kernel 6.18, cgroup v1).
    const OOM_KILL: &str = "6,474,799428461,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=t2,mems_allowed=0,oom_memcg=/default/t2,task_memcg=/default/t2,task=dd,pid=11227,uid=0";
    const KILLED: &str = "3,475,799428500,-;Memory cgroup out of memory: Killed process 11227 (dd) total-vm:104668kB, anon-rss:32384kB, file-rss:1520kB, shmem-rss:0kB, UID:0 pgtables:104kB oom_score_adj:1";
    // The global form (mm/oom_kill.c: "global_oom" instead of oom_memcg=).
    const GLOBAL: &str = "6,900,1,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/default/big,task=python3,pid=4242,uid=0";
    const GLOBAL_KILLED: &str = "3,901,2,-;Out of memory: Killed process 4242 (python3) total-vm:9999kB, anon-rss:8000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:0";

    #[test]
    fn memcg_oom_records() {
        let mut asm = Assembler::default();
        assert_eq!(asm.push(parse_record(OOM_KILL).unwrap()), None);
        let v = asm.push(parse_record(KILLED).unwrap()).unwrap();
        assert_eq!(v.pid, 11227);
        assert_eq!(v.comm, "dd");
        assert_eq!(v.task_memcg, "/default/t2");
        assert_eq!(v.oom_memcg.as_deref(), Some("/default/t2"));
        assert_eq!(v.anon_rss_kb, Some(32384));
        assert!(!v.is_global());
        assert!(v.in_memcg("/default/t2"));
        assert!(!v.in_memcg("/default/t"));
        assert!(!v.in_memcg(""));
    }

    #[test]
    fn global_oom_records() {
        let mut asm = Assembler::default();
        asm.push(parse_record(GLOBAL).unwrap());
        let v = asm.push(parse_record(GLOBAL_KILLED).unwrap()).unwrap();
        assert!(v.is_global());
        assert_eq!(
            (v.pid, v.comm.as_str(), v.anon_rss_kb),
            (4242, "python3", Some(8000))
        );
        assert!(v.in_memcg("/default"));
    }

    #[test]
    fn odd_and_malformed_lines() {
        assert_eq!(parse_record("6,1,1,-;eth0: link up"), None);
        assert_eq!(parse_record("garbage without semicolon"), None);
        assert_eq!(
            parse_record("3,1,1,-;Killed process notapid (x) total-vm:1kB"),
            None
        );
        assert_eq!(parse_record("3,1,1,-;Killed process 12"), None);
        assert_eq!(
            parse_record("6,1,1,-;oom-kill:constraint=X,task_memcg=/a"),
            None,
            "no pid"
        );
        assert_eq!(parse_record("6,1,1,-;oom-kill:pid=-3,task_memcg=/a"), None);
        // A command with parentheses and spaces.
        let r = parse_record("3,1,1,-;Memory cgroup out of memory: Killed process 7 (my (odd) cmd) total-vm:1kB, anon-rss:5kB, file-rss:0kB").unwrap();
        assert_eq!(
            r,
            Record::Killed {
                pid: 7,
                comm: "my (odd) cmd".into(),
                anon_rss_kb: Some(5)
            }
        );
        // A Killed record without its oom-kill record yields nothing.
        let mut asm = Assembler::default();
        assert_eq!(asm.push(parse_record(KILLED).unwrap()), None);
        // Multi-byte text does not break the parser.
        assert_eq!(
            parse_record("6,1,1,-;oom-kill:task=é,pid=1,task_memcg=/ü").map(|_| ()),
            Some(())
        );
    }
}
