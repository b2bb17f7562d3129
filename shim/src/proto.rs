//! oomguard's own containerd events: the messages generated (build.rs) from
//! `proto/oomguard/events/v1/oom.proto`, their topics and type URLs.

pub(crate) mod generated {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
}

pub use generated::oom::{MemoryPressure, OOMKill, Source, Trigger};

/// The topic of an [`OOMKill`]. Outside `/tasks/`: CRI and Docker subscribe
/// to task topics only, so they never see a message they cannot decode.
pub const OOM_TOPIC: &str = "/oomguard/oom";

/// The type URL of an [`OOMKill`] in the envelope's `Any`: the message's
/// full name, as containerd's own events are named.
pub const OOM_KILL_TYPE_URL: &str = "oomguard.events.v1.OOMKill";

/// The topic and type URL of a [`MemoryPressure`] warning.
pub const PRESSURE_TOPIC: &str = "/oomguard/memory-pressure";
pub const MEMORY_PRESSURE_TYPE_URL: &str = "oomguard.events.v1.MemoryPressure";

/// The proto enum name of a trigger ("TRIGGER_USAGE_LEVEL").
pub fn trigger_name(t: protobuf::EnumOrUnknown<Trigger>) -> String {
    match t.enum_value() {
        Ok(s) => format!("{s:?}"),
        Err(n) => n.to_string(),
    }
}

/// Folds a later report of the same container into `into` (the queue keeps
/// one per OOM story when containerd is away long; see `events.rs`): the
/// latest victim, figures and time, the counts added up, the highest peak.
pub fn fold(into: &mut OOMKill, later: OOMKill) {
    let killed = match (into.processes_killed, later.processes_killed) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    };
    let peak = into.memcg_peak_bytes.max(later.memcg_peak_bytes);
    let episodes = into.episodes.max(1).saturating_add(later.episodes.max(1));
    *into = OOMKill {
        processes_killed: killed,
        memcg_peak_bytes: peak,
        episodes,
        ..later
    };
}

/// The proto enum name of a source ("SOURCE_MEMCG_EVENT"), as protojson
/// writes it.
pub fn source_name(source: protobuf::EnumOrUnknown<Source>) -> String {
    match source.enum_value() {
        Ok(s) => format!("{s:?}"),
        Err(n) => n.to_string(),
    }
}
