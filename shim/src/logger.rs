//! The shim's log: lines in containerd's format on the `log` FIFO that
//! containerd reads into its own log.
//!
//! Like `containerd_shim::logger` (whose line format this keeps), but each
//! line goes out in one `write`: that crate's logger formats straight into
//! the FIFO, about twenty writes a line, and every write can wake
//! containerd's reader. On the way from a memcg OOM notification to TaskOOM
//! the shim logs a few lines; with one write each they cost containerd (and
//! the CPU the TaskOOM's Forward needs) a few wake-ups instead of ~60. A
//! line under PIPE_BUF (4096 bytes) is also written atomically.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use log::kv::{self, Visitor};
use log::{LevelFilter, Metadata, Record};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `RUST_LOG` overrides the default level, as with containerd's own shims.
pub const LOG_ENV: &str = "RUST_LOG";

/// Lines waiting for the FIFO; past this many, lines are dropped (and
/// counted) rather than block the shim.
const BACKLOG: usize = 4096;

/// How long `flush` (at exit) waits for the backlog to reach the FIFO.
const FLUSH_LIMIT: Duration = Duration::from_millis(500);

enum Item {
    Line(String),
    Flush(SyncSender<()>),
}

/// Writes lines to the FIFO from a thread of its own. A write to the FIFO
/// blocks while containerd does not read it, and on a host whose CPUs are
/// all busy that was seen to hold the shim's one runtime thread for 55 ms:
/// long enough for a gVisor container's burst to finish before the watch
/// could stop it. The thread sleeps on its queue when there is nothing to
/// write (an idle shim still uses no CPU).
pub struct FifoLogger {
    queue: SyncSender<Item>,
    dropped: Arc<AtomicU64>,
}

impl FifoLogger {
    pub fn with_file(file: File) -> FifoLogger {
        let (queue, lines) = sync_channel(BACKLOG);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("log".into())
            .stack_size(64 * 1024)
            .spawn(move || write_lines(file, lines, counter));
        if let Err(e) = spawned {
            eprintln!("oomguard: no log thread: {e}");
        }
        FifoLogger { queue, dropped }
    }
}

/// The log thread: each line in one write; a note of lines dropped meanwhile
/// before the next one.
fn write_lines(mut file: File, lines: Receiver<Item>, dropped: Arc<AtomicU64>) {
    for item in lines {
        match item {
            Item::Line(line) => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let note = format!(
                        "time=\"{}\" level=warn msg=\"{lost} log line(s) dropped: containerd did not read the shim's log in time\"\n\n",
                        OffsetDateTime::now_utc()
                            .format(&Rfc3339)
                            .unwrap_or_default()
                    );
                    let _ = file.write_all(note.as_bytes());
                }
                // containerd may be away (its end of the FIFO closed): a lost
                // line is not a reason to stop.
                let _ = file.write_all(line.as_bytes());
            }
            Item::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// One log line, `time="..." level=... k="v" msg="..."` and the empty line
/// containerd's shims end it with.
pub fn format_line(record: &Record) -> String {
    let mut line = String::with_capacity(256);
    let now = OffsetDateTime::now_utc();
    let time = now.format(&Rfc3339).unwrap_or_else(|_| now.to_string());
    let _ = write!(
        line,
        "time=\"{time}\" level={}",
        record.level().as_str().to_lowercase()
    );
    let _ = record.key_values().visit(&mut KeyValues(&mut line));
    let _ = write!(line, " msg=\"{}\"\n\n", record.args());
    line
}

struct KeyValues<'a>(&'a mut String);

impl<'kvs> Visitor<'kvs> for KeyValues<'_> {
    fn visit_pair(&mut self, k: kv::Key<'kvs>, v: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let _ = write!(self.0, " {k}=\"{v}\"");
        Ok(())
    }
}

impl log::Log for FifoLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match self.queue.try_send(Item::Line(format_line(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits (at most FLUSH_LIMIT) until the lines logged so far are written.
    fn flush(&self) {
        let (done, written) = sync_channel(1);
        if self.queue.try_send(Item::Flush(done)).is_ok() {
            let _ = written.recv_timeout(FLUSH_LIMIT);
        }
    }
}

/// The level: `RUST_LOG`, else `default`; containerd's `-debug` raises it
/// to debug.
pub fn level(debug: bool, default: &str, env: Option<&str>) -> LevelFilter {
    let level = LevelFilter::from_str(env.unwrap_or(default)).unwrap_or(LevelFilter::Info);
    if debug && LevelFilter::Debug > level {
        LevelFilter::Debug
    } else {
        level
    }
}

/// Logs to the FIFO `log` in the current directory (containerd makes it in
/// the bundle before it starts a serving shim).
pub fn init(debug: bool, default: &str) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open("log")?;
    let env = std::env::var(LOG_ENV).ok();
    log::set_max_level(level(debug, default, env.as_deref()));
    log::set_boxed_logger(Box::new(FifoLogger::with_file(file)))
        .map_err(|e| io::Error::new(io::ErrorKind::AlreadyExists, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    #[test]
    fn one_line_in_containerds_format() {
        let line = format_line(
            &Record::builder()
                .level(log::Level::Info)
                .args(format_args!("oom id={} publishing", "c1"))
                .build(),
        );
        assert!(line.starts_with("time=\""), "{line}");
        assert!(
            line.ends_with(" level=info msg=\"oom id=c1 publishing\"\n\n"),
            "{line}"
        );
        // RFC 3339 UTC: 2026-12-03T13:23:04.073599722Z
        let time = &line[6..line.find("\" level").unwrap()];
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    }

    #[test]
    fn levels() {
        assert_eq!(level(false, "info", None), LevelFilter::Info);
        assert_eq!(level(true, "info", None), LevelFilter::Debug);
        assert_eq!(level(false, "info", Some("warn")), LevelFilter::Warn);
        assert_eq!(level(true, "info", Some("trace")), LevelFilter::Trace);
        assert_eq!(level(false, "info", Some("bogus")), LevelFilter::Info);
    }

    /// Each line is one write: over a datagram socket (which keeps write
    /// boundaries) the first datagram is the whole line.
    #[test]
    fn a_line_is_one_write() {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let logger = FifoLogger::with_file(File::from(std::os::fd::OwnedFd::from(ours)));
        log::set_max_level(LevelFilter::Info);
        logger.log(
            &Record::builder()
                .level(log::Level::Warn)
                .args(format_args!("a {} b {} c", 1, "two"))
                .build(),
        );
        let mut buf = [0u8; 4096];
        let n = theirs.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(got.starts_with("time=\""), "{got}");
        assert!(got.ends_with("level=warn msg=\"a 1 b two c\"\n\n"), "{got}");
    }

    /// A reader that never reads does not hold up the caller: lines past
    /// the backlog are counted, and the count is written once it reads.
    #[test]
    fn a_stalled_reader_never_blocks_the_logger() {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let logger = FifoLogger::with_file(File::from(std::os::fd::OwnedFd::from(ours)));
        log::set_max_level(LevelFilter::Info);
        let t0 = std::time::Instant::now();
        for i in 0..(BACKLOG * 3) {
            logger.log(
                &Record::builder()
                    .level(log::Level::Info)
                    .args(format_args!("line {i}"))
                    .build(),
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(logger.dropped.load(Ordering::Relaxed) > 0);
        // Once read, what was kept arrives in order, then the note.
        theirs.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match theirs.recv(&mut buf) {
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).to_string()),
                Err(_) => {
                    if got.iter().any(|l| l.contains("dropped")) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        assert!(got[0].contains("msg=\"line 0\""), "{:?}", &got[..1]);
        let numbers: Vec<usize> = got
            .iter()
            .filter_map(|l| l.split("msg=\"line ").nth(1))
            .filter_map(|r| r.split('"').next()?.parse().ok())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order");
        assert!(
            got.iter().any(|l| l.contains("log line(s) dropped")),
            "the loss is said"
        );
    }
}
