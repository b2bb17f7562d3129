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
use std::sync::Mutex;

use log::kv::{self, Visitor};
use log::{LevelFilter, Metadata, Record};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `RUST_LOG` overrides the default level, as with containerd's own shims.
pub const LOG_ENV: &str = "RUST_LOG";

pub struct FifoLogger {
    file: Mutex<File>,
}

impl FifoLogger {
    pub fn with_file(file: File) -> FifoLogger {
        FifoLogger {
            file: Mutex::new(file),
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
        let line = format_line(record);
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // containerd may be away (its end of the FIFO closed): a lost line
        // is not a reason to stop.
        let _ = file.write_all(line.as_bytes());
    }

    fn flush(&self) {}
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
}
