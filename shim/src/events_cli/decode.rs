//! What an event's `Any` holds, as named fields: containerd's task events
//! and oomguard's own, decoded with the same generated messages the shim
//! publishes them with. Bytes from the wire: a body that does not decode is
//! an error for that event only.

use containerd_shim_protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM,
    TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use serde_json::{json, Map, Value};

use crate::proto::{self, OOMKill};

/// A decoded event body: the message's name and its fields by their proto
/// names, in proto order. Unset optional fields are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub kind: &'static str,
    pub fields: Map<String, Value>,
}

/// Decodes the body of an event of type `type_url`. `Ok(None)`: a type this
/// command does not know (containerd's other events, a newer oomguard's).
pub fn decode(type_url: &str, value: &[u8]) -> Result<Option<Decoded>, String> {
    // Some publishers prefix the name (type.googleapis.com/NAME).
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let (kind, fields) = match name {
        "containerd.events.TaskCreate" => {
            let e: TaskCreate = parse(value)?;
            let io = e.io.as_ref();
            (
                "TaskCreate",
                json!({
                    "container_id": e.container_id,
                    "bundle": e.bundle,
                    "pid": e.pid,
                    "stdin": io.map(|i| i.stdin.clone()).unwrap_or_default(),
                    "stdout": io.map(|i| i.stdout.clone()).unwrap_or_default(),
                    "stderr": io.map(|i| i.stderr.clone()).unwrap_or_default(),
                    "terminal": io.is_some_and(|i| i.terminal),
                    "checkpoint": e.checkpoint,
                }),
            )
        }
        "containerd.events.TaskStart" => {
            let e: TaskStart = parse(value)?;
            (
                "TaskStart",
                json!({"container_id": e.container_id, "pid": e.pid}),
            )
        }
        "containerd.events.TaskOOM" => {
            let e: TaskOOM = parse(value)?;
            ("TaskOOM", json!({"container_id": e.container_id}))
        }
        "containerd.events.TaskExit" => {
            let e: TaskExit = parse(value)?;
            (
                "TaskExit",
                json!({
                    "container_id": e.container_id,
                    "id": e.id,
                    "pid": e.pid,
                    "exit_status": e.exit_status,
                    "exited_at": time(&e.exited_at),
                }),
            )
        }
        "containerd.events.TaskDelete" => {
            let e: TaskDelete = parse(value)?;
            (
                "TaskDelete",
                json!({
                    "container_id": e.container_id,
                    "pid": e.pid,
                    "exit_status": e.exit_status,
                    "exited_at": time(&e.exited_at),
                    "id": e.id,
                }),
            )
        }
        "containerd.events.TaskExecAdded" => {
            let e: TaskExecAdded = parse(value)?;
            (
                "TaskExecAdded",
                json!({"container_id": e.container_id, "exec_id": e.exec_id}),
            )
        }
        "containerd.events.TaskExecStarted" => {
            let e: TaskExecStarted = parse(value)?;
            (
                "TaskExecStarted",
                json!({"container_id": e.container_id, "exec_id": e.exec_id, "pid": e.pid}),
            )
        }
        "containerd.events.TaskPaused" => {
            let e: TaskPaused = parse(value)?;
            ("TaskPaused", json!({"container_id": e.container_id}))
        }
        "containerd.events.TaskResumed" => {
            let e: TaskResumed = parse(value)?;
            ("TaskResumed", json!({"container_id": e.container_id}))
        }
        "containerd.events.TaskCheckpointed" => {
            let e: TaskCheckpointed = parse(value)?;
            (
                "TaskCheckpointed",
                json!({"container_id": e.container_id, "checkpoint": e.checkpoint}),
            )
        }
        proto::OOM_KILL_TYPE_URL => ("OOMKill", oom_kill(&parse(value)?)),
        proto::MEMORY_PRESSURE_TYPE_URL => ("MemoryPressure", pressure(&parse(value)?)),
        _ => return Ok(None),
    };
    let Value::Object(fields) = fields else {
        return Err(format!("{kind}: fields are not an object"));
    };
    Ok(Some(Decoded { kind, fields }))
}

fn parse<M: Message>(value: &[u8]) -> Result<M, String> {
    M::parse_from_bytes(value).map_err(|e| format!("{}: {e}", M::NAME))
}

/// The fields of a MemoryPressure warning: what the shim did not know
/// stays out.
fn pressure(e: &proto::MemoryPressure) -> Value {
    let mut m = Map::new();
    m.insert("container_id".into(), json!(e.container_id));
    if !e.sandbox_id.is_empty() {
        m.insert("sandbox_id".into(), json!(e.sandbox_id));
    }
    if let Some(t) = time(&e.timestamp) {
        m.insert("timestamp".into(), json!(t));
    }
    m.insert("trigger".into(), json!(proto::trigger_name(e.trigger)));
    if let Some(w) = e.working_set_bytes {
        m.insert("working_set_bytes".into(), json!(w));
    }
    if let Some(l) = e.limit_bytes {
        m.insert("limit_bytes".into(), json!(l));
    }
    m.insert("level_percent".into(), json!(e.level_percent));
    Value::Object(m)
}

/// The fields of an OOMKill: what the shim did not know stays out.
fn oom_kill(e: &OOMKill) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("container_id", json!(e.container_id));
    if !e.sandbox_id.is_empty() {
        put("sandbox_id", json!(e.sandbox_id));
    }
    if let Some(t) = time(&e.timestamp) {
        put("timestamp", json!(t));
    }
    put("source", json!(proto::source_name(e.source)));
    if let Some(pid) = e.victim_pid {
        put("victim_pid", json!(pid));
    }
    if !e.victim_comm.is_empty() {
        put("victim_comm", json!(e.victim_comm));
    }
    let optional = [
        ("victim_rss_kib", e.victim_rss_kib),
        ("memcg_usage_bytes", e.memcg_usage_bytes),
        ("memcg_limit_bytes", e.memcg_limit_bytes),
        ("memcg_peak_bytes", e.memcg_peak_bytes),
        ("processes_killed", e.processes_killed.map(u64::from)),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            put(k, json!(v));
        }
    }
    put("group_kill", json!(e.group_kill));
    if let Some(h) = e.host_oom {
        put("host_oom", json!(h));
    }
    put("episodes", json!(e.episodes));
    Value::Object(m)
}

/// A protobuf timestamp as RFC 3339 (UTC, nanoseconds), `None` when unset
/// or out of range.
pub fn time(t: &MessageField<Timestamp>) -> Option<String> {
    let t = t.as_ref()?;
    rfc3339(t.seconds, t.nanos)
}

pub fn rfc3339(seconds: i64, nanos: i32) -> Option<String> {
    let at = i128::from(seconds)
        .checked_mul(1_000_000_000)?
        .checked_add(i128::from(nanos))?;
    time::OffsetDateTime::from_unix_timestamp_nanos(at)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::timestamp;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn task_events_by_their_type_urls() {
        let mut e = TaskExit::new();
        e.container_id = "c1".into();
        e.id = "c1".into();
        e.pid = 77;
        e.exit_status = 137;
        e.exited_at = MessageField::some(timestamp(UNIX_EPOCH + Duration::new(1_700_000_000, 5)));
        let d = decode("containerd.events.TaskExit", &e.write_to_bytes().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(d.kind, "TaskExit");
        assert_eq!(
            Value::Object(d.fields).to_string(),
            r#"{"container_id":"c1","id":"c1","pid":77,"exit_status":137,"exited_at":"2023-11-14T22:13:20.000000005Z"}"#
        );
        let mut o = TaskOOM::new();
        o.container_id = "c1".into();
        let d = decode(
            "type.googleapis.com/containerd.events.TaskOOM",
            &o.write_to_bytes().unwrap(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.kind, "TaskOOM");
        assert_eq!(d.fields["container_id"], "c1");
    }

    #[test]
    fn unknown_types_and_bad_bodies() {
        assert_eq!(
            decode("containerd.events.ImageCreate", b"\x0a\x01x"),
            Ok(None)
        );
        // A length beyond the body.
        let err = decode("containerd.events.TaskExit", b"\x0a\x05ab").unwrap_err();
        assert!(err.contains("TaskExit"), "{err}");
        let err = decode(proto::OOM_KILL_TYPE_URL, b"\xff\xff\xff").unwrap_err();
        assert!(err.contains("OOMKill"), "{err}");
    }

    #[test]
    fn oom_kill_leaves_out_what_is_unknown() {
        let e = OOMKill {
            container_id: "c2".into(),
            source: proto::Source::SOURCE_OWN_LIMIT.into(),
            memcg_usage_bytes: Some(70 << 20),
            memcg_limit_bytes: Some(64 << 20),
            group_kill: true,
            episodes: 1,
            ..Default::default()
        };
        let d = decode(proto::OOM_KILL_TYPE_URL, &e.write_to_bytes().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            Value::Object(d.fields).to_string(),
            r#"{"container_id":"c2","source":"SOURCE_OWN_LIMIT","memcg_usage_bytes":73400320,"memcg_limit_bytes":67108864,"group_kill":true,"episodes":1}"#
        );
        // A source value from a newer oomguard is shown as its number.
        let e = OOMKill {
            container_id: "c3".into(),
            source: protobuf::EnumOrUnknown::from_i32(9),
            ..Default::default()
        };
        let d = decode(proto::OOM_KILL_TYPE_URL, &e.write_to_bytes().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(d.fields["source"], "9");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0, 0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(i64::MAX, 0), None);
        assert_eq!(time(&MessageField::none()), None);
    }
}
