//! The story of one OOM kill as the shim tells it to containerd's event
//! stream (`/oomguard/oom`, proto/oomguard/events/v1/oom.proto): what was
//! known when the kill was seen, nothing guessed.

use std::time::SystemTime;

use containerd_shim_protos::protobuf::MessageField;

use super::figures::MemoryFigures;
use super::kmsg::Victim;
use crate::events::timestamp;
use crate::proto::{OOMKill, Source};

/// The signal that showed the shim the kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The memcg's notification and OOM kill counter (or its re-read at
    /// exit).
    MemcgEvent,
    /// A kernel log OOM record of the container's memcg came first.
    KernelLog,
    /// The host killed a gVisor sandbox (its sentry).
    GvisorSentry,
    /// oomguard enforced a gVisor container's own limit.
    OwnLimit,
}

impl Signal {
    fn source(self) -> Source {
        match self {
            Signal::MemcgEvent => Source::SOURCE_MEMCG_EVENT,
            Signal::KernelLog => Source::SOURCE_KERNEL_LOG,
            Signal::GvisorSentry => Source::SOURCE_GVISOR_SENTRY,
            Signal::OwnLimit => Source::SOURCE_OWN_LIMIT,
        }
    }
}

/// What the shim knows of one OOM episode.
#[derive(Debug, Clone)]
pub struct OomReport {
    pub container_id: String,
    pub sandbox_id: Option<String>,
    pub at: SystemTime,
    pub signal: Signal,
    pub victim: Option<Victim>,
    pub memory: MemoryFigures,
    pub processes_killed: Option<u64>,
    pub group_kill: bool,
    /// OOM episodes this report stands for (1 unless several were seen at
    /// once).
    pub episodes: u64,
}

impl OomReport {
    pub fn new(container_id: &str, sandbox_id: Option<&str>, signal: Signal) -> OomReport {
        OomReport {
            container_id: container_id.to_string(),
            sandbox_id: sandbox_id.map(str::to_string),
            at: SystemTime::now(),
            signal,
            victim: None,
            memory: MemoryFigures::default(),
            processes_killed: None,
            group_kill: false,
            episodes: 1,
        }
    }

    pub fn to_message(&self) -> OOMKill {
        let victim = self.victim.as_ref();
        OOMKill {
            container_id: self.container_id.clone(),
            sandbox_id: self.sandbox_id.clone().unwrap_or_default(),
            timestamp: MessageField::some(timestamp(self.at)),
            source: self.signal.source().into(),
            victim_pid: victim.map(|v| v.pid),
            victim_comm: victim.map(|v| v.comm.clone()).unwrap_or_default(),
            victim_rss_kib: victim.and_then(|v| v.anon_rss_kb),
            memcg_usage_bytes: self.memory.usage,
            memcg_limit_bytes: self.memory.limit,
            memcg_peak_bytes: self.memory.peak,
            processes_killed: self
                .processes_killed
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            group_kill: self.group_kill,
            // Only the kernel log tells a host OOM from a limit.
            host_oom: victim.map(Victim::is_global),
            episodes: u32::try_from(self.episodes.max(1)).unwrap_or(u32::MAX),
            ..Default::default()
        }
    }

    /// One line for the shim's log: the report as it goes out.
    pub fn describe(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        format!(
            "source={:?} victim={} usage={} limit={} peak={} killed={} group_kill={} sandbox={} episodes={}",
            self.signal,
            self.victim
                .as_ref()
                .map(|v| format!("{}({})", v.pid, v.comm))
                .unwrap_or_else(|| "-".into()),
            opt(self.memory.usage),
            opt(self.memory.limit),
            opt(self.memory.peak),
            opt(self.processes_killed),
            self.group_kill,
            self.sandbox_id.as_deref().unwrap_or("-"),
            self.episodes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    fn victim(global: bool) -> Victim {
        Victim {
            pid: 4242,
            comm: "dd".into(),
            task_memcg: "/ns/c1".into(),
            oom_memcg: (!global).then(|| "/ns/c1".to_string()),
            anon_rss_kb: Some(31_744),
            constraint: if global {
                "CONSTRAINT_NONE"
            } else {
                "CONSTRAINT_MEMCG"
            }
            .into(),
        }
    }

    #[test]
    fn round_trips_through_protobuf() {
        let mut r = OomReport::new("c1", Some("pod1"), Signal::MemcgEvent);
        r.victim = Some(victim(false));
        r.memory = MemoryFigures {
            usage: Some(30 << 20),
            limit: Some(32 << 20),
            peak: Some(32 << 20),
        };
        r.processes_killed = Some(1);
        r.group_kill = true;
        let sent = r.to_message();
        let bytes = sent.write_to_bytes().unwrap();
        let got = OOMKill::parse_from_bytes(&bytes).unwrap();
        assert_eq!(got, sent);
        assert_eq!(got.container_id, "c1");
        assert_eq!(got.sandbox_id, "pod1");
        assert_eq!(got.source.enum_value(), Ok(Source::SOURCE_MEMCG_EVENT));
        assert_eq!(
            (got.victim_pid, got.victim_comm.as_str(), got.victim_rss_kib),
            (Some(4242), "dd", Some(31_744))
        );
        assert_eq!(
            (
                got.memcg_usage_bytes,
                got.memcg_limit_bytes,
                got.memcg_peak_bytes
            ),
            (Some(30 << 20), Some(32 << 20), Some(32 << 20))
        );
        assert_eq!(got.processes_killed, Some(1));
        assert!(got.group_kill);
        assert_eq!(got.host_oom, Some(false));
        assert_eq!(got.episodes, 1);
        let t = got.timestamp.unwrap();
        assert!(t.seconds > 1_600_000_000, "{t:?}");
    }

    #[test]
    fn unknown_fields_stay_unset_on_the_wire() {
        // Own-limit enforcement: no victim, no counts, no peak.
        let mut r = OomReport::new("c2", None, Signal::OwnLimit);
        r.memory.usage = Some(70 << 20);
        r.memory.limit = Some(64 << 20);
        r.group_kill = true;
        let got = OOMKill::parse_from_bytes(&r.to_message().write_to_bytes().unwrap()).unwrap();
        assert_eq!(got.victim_pid, None);
        assert_eq!(got.victim_comm, "");
        assert_eq!(got.victim_rss_kib, None);
        assert_eq!(got.memcg_peak_bytes, None);
        assert_eq!(got.processes_killed, None);
        assert_eq!(got.host_oom, None);
        assert_eq!(got.sandbox_id, "");
        assert_eq!(got.source.enum_value(), Ok(Source::SOURCE_OWN_LIMIT));
        // A known zero is sent and read back as zero, not as unknown.
        let mut r = OomReport::new("c3", None, Signal::KernelLog);
        r.memory.usage = Some(0);
        r.victim = Some(victim(true));
        let got = OOMKill::parse_from_bytes(&r.to_message().write_to_bytes().unwrap()).unwrap();
        assert_eq!(got.memcg_usage_bytes, Some(0));
        assert_eq!(got.host_oom, Some(true));
    }

    #[test]
    fn a_newer_sender_s_fields_are_skipped() {
        // Field 99 (varint 7) appended by a newer oomguard: still decodes.
        let mut bytes = OomReport::new("c4", None, Signal::GvisorSentry)
            .to_message()
            .write_to_bytes()
            .unwrap();
        bytes.extend_from_slice(&[0x98, 0x06, 0x07]);
        let got = OOMKill::parse_from_bytes(&bytes).unwrap();
        assert_eq!(got.container_id, "c4");
        assert_eq!(got.source.enum_value(), Ok(Source::SOURCE_GVISOR_SENTRY));
    }
}
