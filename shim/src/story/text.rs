//! The one-line story of an OOM kill, for people: what was killed, how close
//! to its limit the container was, and how oomguard knew.

/// How the shim learned of the kill (the typed event's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    Unknown,
    MemcgEvent,
    KernelLog,
    GvisorSentry,
    OwnLimit,
}

/// What is known of one OOM kill; unknown parts are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Story {
    pub source: Source,
    pub victim_pid: Option<i32>,
    pub victim_comm: Option<String>,
    pub victim_rss_kib: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
    pub processes_killed: Option<u32>,
    pub group_kill: bool,
    pub global: bool,
}

impl From<&crate::oom::report::OomReport> for Story {
    fn from(r: &crate::oom::report::OomReport) -> Story {
        use crate::oom::report::Signal;
        let victim = r.victim.as_ref();
        Story {
            source: match r.signal {
                Signal::MemcgEvent => Source::MemcgEvent,
                Signal::KernelLog => Source::KernelLog,
                Signal::GvisorSentry => Source::GvisorSentry,
                Signal::OwnLimit => Source::OwnLimit,
            },
            victim_pid: victim.map(|v| v.pid),
            victim_comm: victim.map(|v| v.comm.clone()),
            victim_rss_kib: victim.and_then(|v| v.anon_rss_kb),
            usage_bytes: r.memory.usage,
            limit_bytes: r.memory.limit,
            peak_bytes: r.memory.peak,
            processes_killed: r.processes_killed.and_then(|k| u32::try_from(k).ok()),
            group_kill: r.group_kill,
            global: victim.is_some_and(|v| v.is_global()),
        }
    }
}

/// The kubelet keeps at most this much of a termination message.
pub const MAX_BYTES: usize = 4096;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A command name as the kernel logged it, safe to print on one line.
fn clean(comm: &str) -> String {
    comm.chars().filter(|c| !c.is_control()).take(64).collect()
}

impl Story {
    /// "oomguard: OOM-killed: ..." on one line, at most [`MAX_BYTES`].
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        let peak = self.peak_bytes.or(self.usage_bytes);
        let what = match (self.source, self.global, self.limit_bytes) {
            (Source::OwnLimit, _, Some(l)) => {
                format!(
                    "went over its own memory limit of {} inside the gVisor pod",
                    mib(l)
                )
            }
            (_, true, _) => "the node ran out of memory (a host-wide OOM kill)".to_string(),
            (Source::GvisorSentry, _, Some(l)) => {
                format!("the gVisor sandbox reached its memory limit of {}", mib(l))
            }
            (_, _, Some(l)) => format!("the container reached its memory limit of {}", mib(l)),
            (_, _, None) => "the kernel's OOM killer struck".to_string(),
        };
        parts.push(what);
        if let (Some(p), Some(l)) = (peak, self.limit_bytes.filter(|l| *l > 0)) {
            parts.push(format!(
                "peak {} ({}% of the limit)",
                mib(p),
                (p as f64 * 100.0 / l as f64).round() as u64
            ));
        }
        let victim = match (&self.victim_comm, self.victim_pid) {
            (Some(c), Some(p)) => Some(format!("{} (pid {p})", clean(c))),
            (Some(c), None) => Some(clean(c)),
            (None, Some(p)) => Some(format!("pid {p}")),
            (None, None) => None,
        };
        if let Some(v) = victim {
            let v = if self.source == Source::GvisorSentry {
                format!("the gVisor sandbox, {v}")
            } else {
                v
            };
            let rss = self
                .victim_rss_kib
                .map(|k| format!(", {} resident", mib(k * 1024)))
                .unwrap_or_default();
            parts.push(format!("killed {v}{rss}"));
        }
        if let Some(n) = self.processes_killed.filter(|n| *n > 1) {
            parts.push(format!("{n} processes OOM-killed"));
        }
        if self.group_kill {
            parts.push("the rest of the container was killed with it (oom_group)".to_string());
        }
        let how = match self.source {
            Source::MemcgEvent => "seen in the memory cgroup's OOM events",
            Source::KernelLog => "seen in the kernel log",
            Source::GvisorSentry => "seen in the sandbox's host memory cgroup",
            Source::OwnLimit => "killed by oomguard, which enforces the limit gVisor does not",
            Source::Unknown => "",
        };
        if !how.is_empty() {
            parts.push(how.to_string());
        }
        let mut line = format!("oomguard: OOM-killed: {}", parts.join("; "));
        if line.len() > MAX_BYTES {
            let mut end = MAX_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memcg_kill_with_its_victim() {
        let s = Story {
            source: Source::MemcgEvent,
            victim_pid: Some(4711),
            victim_comm: Some("dd".into()),
            victim_rss_kib: Some(32_000),
            usage_bytes: Some(30 << 20),
            limit_bytes: Some(32 << 20),
            peak_bytes: Some(32 << 20),
            processes_killed: Some(1),
            group_kill: true,
            global: false,
        };
        assert_eq!(
            s.line(),
            "oomguard: OOM-killed: the container reached its memory limit of 32.0 MiB; \
             peak 32.0 MiB (100% of the limit); killed dd (pid 4711), 31.2 MiB resident; \
             the rest of the container was killed with it (oom_group); \
             seen in the memory cgroup's OOM events"
        );
    }

    #[test]
    fn unknown_parts_are_left_out_and_names_cleaned() {
        let s = Story {
            victim_comm: Some("evil\nname\u{1b}[31m".into()),
            global: true,
            ..Story::default()
        };
        assert_eq!(
            s.line(),
            "oomguard: OOM-killed: the node ran out of memory (a host-wide OOM kill); killed evilname[31m"
        );
        let own = Story {
            source: Source::OwnLimit,
            limit_bytes: Some(64 << 20),
            usage_bytes: Some(68 << 20),
            ..Story::default()
        };
        assert!(own.line().contains("over its own memory limit of 64.0 MiB inside the gVisor pod; peak 68.0 MiB (106% of the limit)"), "{}", own.line());
    }

    #[test]
    fn never_longer_than_the_kubelet_keeps() {
        let s = Story {
            victim_comm: Some("é".repeat(5000)),
            ..Story::default()
        };
        assert!(s.line().len() <= MAX_BYTES);
    }
}
