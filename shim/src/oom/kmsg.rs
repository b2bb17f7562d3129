//! The kernel log (`/dev/kmsg`) names every OOM victim: its pid, command,
//! rss and memcg. It is the only real-time signal for a host-wide (global)
//! OOM kill of a container process on cgroup v1, where no eventfd fires.
//!
//! One descriptor per shim, opened at the log's end at start-up; victims
//! are broadcast to every container's watch. Lines are untrusted input.
//!
//! The descriptor is read only while something can come of it (`Hold`,
//! `arm_for`, `drain_now`): a memcg OOM whose kill is not confirmed yet,
//! host memory pressure (cgroup v1), a process's exit. Otherwise it stays
//! out of the epoll set, so a record written anywhere on the host costs an
//! idle shim nothing (30 shims reading every record of a 2000 lines/s log
//! used 157 ticks in 10 s). The descriptor keeps its read position while
//! idle, and the kernel's ring buffer keeps the records: an armed read
//! starts where the last one stopped, so a kill logged before the arming is
//! still seen (when the ring wrapped meanwhile, the read resumes at the
//! oldest record it still holds).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::{debug, trace, warn};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{broadcast, Notify};

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

/// A kernel log record that is about an OOM kill but could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed OOM record ({reason}): {excerpt:?}")]
pub struct MalformedRecord {
    /// What was wrong, naming the field.
    pub reason: String,
    /// The start of the record's message.
    pub excerpt: String,
}

/// The longest record text an error quotes.
const EXCERPT: usize = 160;

/// Parses one `/dev/kmsg` record ("PRI,SEQ,TS,FLAGS;MESSAGE" plus optional
/// continuation lines). `Ok(None)`: not about an OOM kill (almost every
/// record), or written by userspace: `/dev/kmsg` gives every userspace
/// record a non-zero facility precisely so it can be told from the
/// kernel's, so a forged "Killed process" line is ignored. `Err`: a kernel
/// record that looks like an OOM kill but is malformed, with the reason.
pub fn parse_record(record: &str) -> Result<Option<Record>, MalformedRecord> {
    let (prefix, message) = match record.split_once(';') {
        Some((prefix, message)) => (Some(prefix), message),
        None => (None, record),
    };
    let message = message.lines().next().unwrap_or_default().trim_end();
    let oom_kill = message.strip_prefix("oom-kill:");
    let killed = message.find("Killed process ");
    if oom_kill.is_none() && killed.is_none() {
        return Ok(None);
    }
    let malformed = |reason: String| MalformedRecord {
        reason,
        excerpt: message.chars().take(EXCERPT).collect(),
    };
    match prefix.map(facility) {
        Some(Ok(0)) => {}
        Some(Ok(_)) => return Ok(None),
        Some(Err(reason)) => return Err(malformed(reason)),
        None => return Err(malformed("no PRI,SEQ,TS,FLAGS; prefix".to_string())),
    }
    if let Some(fields) = oom_kill {
        return parse_oom_kill(fields)
            .map(|v| Some(Record::OomKill(v)))
            .map_err(malformed);
    }
    let rest = killed
        .and_then(|idx| message.get(idx + "Killed process ".len()..))
        .unwrap_or_default();
    parse_killed(rest).map(Some).map_err(malformed)
}

/// The syslog facility of a record prefix "PRI,SEQ,TS,FLAGS".
fn facility(prefix: &str) -> Result<u32, String> {
    let mut fields = prefix.split(',');
    let pri = fields.next().unwrap_or_default();
    let pri: u32 = pri
        .parse()
        .map_err(|_| format!("record priority {pri:?} is not a number"))?;
    if fields.count() < 3 {
        return Err(format!("record prefix {prefix:?} is not PRI,SEQ,TS,FLAGS"));
    }
    Ok(pri >> 3)
}

/// `PID (COMM) total-vm:..., anon-rss:NkB, ...` after "Killed process ".
fn parse_killed(rest: &str) -> Result<Record, String> {
    let (pid, rest) = rest
        .split_once(' ')
        .ok_or_else(|| "Killed process: nothing after the pid".to_string())?;
    let pid = positive_pid(pid).map_err(|e| format!("Killed process: {e}"))?;
    let rest = rest
        .strip_prefix('(')
        .ok_or_else(|| "Killed process: no '(' opening the command".to_string())?;
    // The command may itself contain ") ": the last ") total-vm" ends it.
    let end = rest
        .rfind(") total-vm")
        .or_else(|| rest.rfind(')'))
        .ok_or_else(|| "Killed process: no ')' closing the command".to_string())?;
    let comm = rest[..end].to_string();
    let anon_rss_kb = match rest[end..]
        .split(", ")
        .find_map(|f| f.trim().strip_prefix("anon-rss:"))
    {
        // Kernels before 4.x did not print it.
        None => None,
        Some(v) => Some(
            v.strip_suffix("kB")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("Killed process: anon-rss {v:?} is not a number of kB"))?,
        ),
    };
    Ok(Record::Killed {
        pid,
        comm,
        anon_rss_kb,
    })
}

fn positive_pid(text: &str) -> Result<i32, String> {
    text.parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("pid {text:?} is not a positive number"))
}

fn parse_oom_kill(fields: &str) -> Result<Victim, String> {
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
            "pid" => pid = Some(positive_pid(val).map_err(|e| format!("oom-kill: {e}"))?),
            _ => {}
        }
    }
    v.pid = pid.ok_or_else(|| "oom-kill: no pid= field".to_string())?;
    let task_memcg = task_memcg.ok_or_else(|| "oom-kill: no task_memcg= field".to_string())?;
    if !task_memcg.starts_with('/') {
        return Err(format!("oom-kill: task_memcg {task_memcg:?} is not a path"));
    }
    v.task_memcg = task_memcg;
    Ok(v)
}

/// Merges records into complete victims: the `oom-kill:` record comes first
/// and names the memcg, the `Killed process` record follows with the rss.
#[derive(Default)]
pub struct Assembler {
    pending: HashMap<i32, Victim>,
}

impl Assembler {
    /// Records waiting for their second half (bounded; for tests).
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

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

/// What the kernel log told the watches, broadcast to every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    /// A victim whose memcg the log named.
    Victim(Victim),
    /// A `Killed process` record without its `oom-kill:` record: the kernel
    /// rate-limits the OOM report (10 per 5 s, `oom-kill:` included) but
    /// never the kill line, so in an OOM storm most kills come like this.
    /// Whose it was only the memcg counters tell.
    Kill { pid: i32 },
}

/// Why the log is read (for the log line that says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A memcg entered OOM and its kill is not confirmed yet.
    MemcgOom,
    /// Host memory pressure: a global OOM kill may follow.
    Pressure,
}

/// When the reader reads.
#[derive(Debug, Default)]
struct Arming {
    /// In the epoll set.
    armed: bool,
    /// Holders that need the log until they let go (`Hold`).
    holds: usize,
    /// Read at least until then (`arm_for`).
    until: Option<Instant>,
}

impl Arming {
    fn needed(&self, now: Instant) -> bool {
        self.holds > 0 || self.until.is_some_and(|u| u > now)
    }
}

struct KernelLog {
    fd: Option<OwnedFd>,
    arming: Mutex<Arming>,
    /// Wakes the reader when the arming changed.
    changed: Notify,
    assembler: Mutex<Assembler>,
    logged: broadcast::Sender<Logged>,
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
            arming: Mutex::new(Arming::default()),
            changed: Notify::new(),
            assembler: Mutex::new(Assembler::default()),
            logged: broadcast::channel(1024).0,
        }
    })
}

fn open_at_end() -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        "/dev/kmsg",
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // Only what happens from now on concerns this shim.
    nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekEnd).map_err(io::Error::from)?;
    Ok(fd)
}

/// The log's descriptor as the reactor sees it while armed; the descriptor
/// itself stays open (and keeps its position) across arm and disarm.
struct Registered(RawFd);

impl AsRawFd for Registered {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the shim's kernel log reader (idempotent). It reads only while
/// armed (`hold`, `arm_for`).
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
            loop {
                // Registered before the check, so a notify in between is
                // not lost.
                let changed = log.changed.notified();
                if lock(&log.arming).armed {
                    break;
                }
                changed.await;
            }
            // SAFETY: the descriptor is the static `log.fd`, open for as long
            // as the process lives; it is registered once at a time and
            // deregistered (the AsyncFd dropped) before the next.
            let registered = match unsafe {
                AsyncFd::register_with_interest(Registered(fd.as_raw_fd()), Interest::READABLE)
            }
            .map_err(|e| e.into_parts().1)
            {
                Ok(r) => r,
                Err(e) => {
                    warn!("kmsg: reader stopped: {e}");
                    return;
                }
            };
            if let Err(e) = read_armed(log, &registered).await {
                warn!("kmsg: reader stopped: {e}");
                return;
            }
        }
    });
}

/// Reads while the log is needed; returns once it is not (disarmed).
async fn read_armed(log: &'static KernelLog, registered: &AsyncFd<Registered>) -> io::Result<()> {
    loop {
        let expiry = {
            let a = lock(&log.arming);
            if a.holds > 0 {
                None
            } else {
                a.until
            }
        };
        tokio::select! {
            r = registered.readable() => {
                let mut guard = r?;
                drain_cooperatively(log).await;
                guard.clear_ready();
            }
            _ = log.changed.notified() => {}
            _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now).into()), if expiry.is_some() => {}
        }
        let mut a = lock(&log.arming);
        if !a.needed(Instant::now()) {
            a.armed = false;
            a.until = None;
            debug!("kmsg: nobody needs the kernel log; out of epoll");
            return Ok(());
        }
    }
}

/// Puts the log in the epoll set (if it is not); returns whether it was
/// out.
fn arm(log: &KernelLog, a: &mut Arming, reason: Reason) -> bool {
    if a.armed || log.fd.is_none() {
        return false;
    }
    a.armed = true;
    log.changed.notify_one();
    debug!("kmsg: reading the kernel log ({reason:?})");
    true
}

/// Keeps the kernel log read while it lives.
#[must_use = "the log is read only while the hold lives"]
pub struct Hold(());

pub fn hold(reason: Reason) -> Hold {
    let log = kernel_log();
    let mut a = lock(&log.arming);
    a.holds += 1;
    arm(log, &mut a, reason);
    Hold(())
}

impl Drop for Hold {
    fn drop(&mut self) {
        let log = kernel_log();
        let mut a = lock(&log.arming);
        a.holds = a.holds.saturating_sub(1);
        if a.holds == 0 {
            log.changed.notify_one();
        }
    }
}

/// Reads the kernel log for at least `window` from now. Returns whether
/// the log was idle before.
pub fn arm_for(window: Duration, reason: Reason) -> bool {
    let log = kernel_log();
    let mut a = lock(&log.arming);
    let until = Instant::now() + window;
    a.until = Some(a.until.map_or(until, |u| u.max(until)));
    log.changed.notify_one();
    arm(log, &mut a, reason)
}

/// Whether this shim can read the kernel log at all.
pub fn readable() -> bool {
    kernel_log().fd.is_some()
}

pub fn subscribe() -> broadcast::Receiver<Logged> {
    kernel_log().logged.subscribe()
}

/// Reads every record from the last position on, now, armed or not (the
/// exit path, before it decides: a victim logged before the reap is read
/// even when nothing armed the log). Bounded by the kernel's ring buffer.
pub fn drain_now() -> usize {
    drain(kernel_log(), usize::MAX)
}

/// Records read in one go before the reader lets other tasks run (a
/// backlog after a long idle spell is up to the whole ring buffer).
const BATCH: usize = 256;

async fn drain_cooperatively(log: &KernelLog) {
    while drain(log, BATCH) == BATCH {
        tokio::task::yield_now().await;
    }
}

/// Reads up to `max` records; returns how many it read.
fn drain(log: &KernelLog, max: usize) -> usize {
    let Some(fd) = &log.fd else { return 0 };
    let mut buf = vec![0u8; 8192];
    let mut n_read = 0;
    while n_read < max {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                n_read += 1;
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(logged) = examine(log, &text) {
                    let _ = log.logged.send(logged);
                }
            }
            // Overwritten records: the read position moved on to the
            // oldest record the ring still holds; keep reading.
            Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => {
                warn!("kmsg: read failed: {e}");
                break;
            }
        }
    }
    n_read
}

/// What one record tells the watches.
fn examine(log: &KernelLog, text: &str) -> Option<Logged> {
    let record = parse_record(text).unwrap_or_else(|e| {
        // Only kernel records that look like OOM kills get here: rare.
        warn!("kmsg: {e}; record ignored");
        None
    })?;
    let kill = match &record {
        Record::Killed { pid, .. } => Some(*pid),
        Record::OomKill(_) => None,
    };
    match (lock(&log.assembler).push(record), kill) {
        (Some(victim), _) => {
            // Most victims belong to other shims' containers; only a watch
            // that owns the memcg logs its decision.
            trace!(
                "kmsg: oom victim pid={} comm={} task_memcg={} oom_memcg={:?} anon_rss_kb={:?}",
                victim.pid,
                victim.comm,
                victim.task_memcg,
                victim.oom_memcg,
                victim.anon_rss_kb
            );
            Some(Logged::Victim(victim))
        }
        (None, Some(pid)) => {
            trace!("kmsg: oom kill of pid {pid}, memcg not logged");
            Some(Logged::Kill { pid })
        }
        (None, None) => None,
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

    fn record(text: &str) -> Record {
        parse_record(text).unwrap().unwrap()
    }

    fn malformed(text: &str) -> String {
        parse_record(text).unwrap_err().to_string()
    }

    #[test]
    fn memcg_oom_records() {
        let mut asm = Assembler::default();
        assert_eq!(asm.push(record(OOM_KILL)), None);
        let v = asm.push(record(KILLED)).unwrap();
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
        asm.push(record(GLOBAL));
        let v = asm.push(record(GLOBAL_KILLED)).unwrap();
        assert!(v.is_global());
        assert_eq!(
            (v.pid, v.comm.as_str(), v.anon_rss_kb),
            (4242, "python3", Some(8000))
        );
        assert!(v.in_memcg("/default"));
    }

    #[test]
    fn irrelevant_and_forged_records() {
        assert_eq!(parse_record("6,1,1,-;eth0: link up"), Ok(None));
        assert_eq!(parse_record("garbage without semicolon"), Ok(None));
        assert_eq!(parse_record(""), Ok(None));
        // The oom reaper's line after a kill is not a victim record.
        assert_eq!(
            parse_record("6,476,799428600,-;oom_reaper: reaped process 11227 (dd), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB"),
            Ok(None)
        );
        // `echo '...' > /dev/kmsg`: userspace records get facility user (1)
        // or whatever they ask for but never 0; PRI 14 = user.info.
        let forged = OOM_KILL.replacen("6,", "14,", 1);
        assert_eq!(parse_record(&forged), Ok(None));
        let forged = KILLED.replacen("3,", "11,", 1);
        assert_eq!(parse_record(&forged), Ok(None));
    }

    #[test]
    fn malformed_oom_records_name_the_field() {
        let cases = [
            (
                "3,1,1,-;Killed process notapid (x) total-vm:1kB",
                "pid \"notapid\"",
            ),
            ("3,1,1,-;Killed process 12", "nothing after the pid"),
            (
                "3,1,1,-;Killed process 12 x) total-vm:1kB",
                "no '(' opening",
            ),
            (
                "3,1,1,-;Killed process 12 (x total-vm:1kB",
                "no ')' closing",
            ),
            (
                "3,1,1,-;Killed process 12 (x) total-vm:1kB, anon-rss:lots",
                "anon-rss \"lots\"",
            ),
            (
                "6,1,1,-;oom-kill:constraint=X,task_memcg=/a",
                "no pid= field",
            ),
            ("6,1,1,-;oom-kill:pid=-3,task_memcg=/a", "pid \"-3\""),
            (
                "6,1,1,-;oom-kill:pid=99999999999,task_memcg=/a",
                "pid \"99999999999\"",
            ),
            ("6,1,1,-;oom-kill:pid=3", "no task_memcg= field"),
            (
                "6,1,1,-;oom-kill:pid=3,task_memcg=a",
                "task_memcg \"a\" is not a path",
            ),
            ("x,1,1,-;oom-kill:pid=3,task_memcg=/a", "priority \"x\""),
            ("6;oom-kill:pid=3,task_memcg=/a", "not PRI,SEQ,TS,FLAGS"),
            (
                "oom-kill:pid=3,task_memcg=/a",
                "no PRI,SEQ,TS,FLAGS; prefix",
            ),
        ];
        for (text, want) in cases {
            let got = malformed(text);
            assert!(got.contains(want), "{text}: {got}");
            assert!(got.starts_with("malformed OOM record ("), "{got}");
        }
    }

    #[test]
    fn odd_but_valid_records() {
        // A command with parentheses and spaces.
        let r = record("3,1,1,-;Memory cgroup out of memory: Killed process 7 (my (odd) cmd) total-vm:1kB, anon-rss:5kB, file-rss:0kB");
        assert_eq!(
            r,
            Record::Killed {
                pid: 7,
                comm: "my (odd) cmd".into(),
                anon_rss_kb: Some(5)
            }
        );
        // Old kernels: no anon-rss.
        let r = record("3,1,1,-;Killed process 7 (x) total-vm:1kB");
        assert!(matches!(
            r,
            Record::Killed {
                anon_rss_kb: None,
                ..
            }
        ));
        // A Killed record without its oom-kill record yields nothing.
        let mut asm = Assembler::default();
        assert_eq!(asm.push(record(KILLED)), None);
        // Multi-byte text and continuation lines do not break the parser.
        assert!(matches!(
            record("6,1,1,-;oom-kill:task=é,pid=1,task_memcg=/ü\n SUBSYSTEM=x"),
            Record::OomKill(_)
        ));
    }
}
