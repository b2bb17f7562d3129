//! One output line per event: readable (`TIME NAMESPACE TOPIC container=ID
//! key=value ...`) or one JSON object.

use serde_json::{json, Map, Value};

use super::decode::{decode, rfc3339};

/// An event as containerd's Events service delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// When it happened (the publisher's time), seconds and nanoseconds.
    pub timestamp: Option<(i64, i32)>,
    pub namespace: String,
    pub topic: String,
    /// The body: its type URL and bytes (`None`: no body).
    pub body: Option<(String, Vec<u8>)>,
}

/// What the command knows of an event: its time, its decoded body, or why
/// there is none.
struct Shown {
    time: String,
    type_url: String,
    fields: Option<Map<String, Value>>,
    problem: Option<String>,
}

fn show(ev: &Received) -> Shown {
    let time = ev
        .timestamp
        .and_then(|(s, n)| rfc3339(s, n))
        .unwrap_or_else(|| "-".into());
    let Some((type_url, value)) = &ev.body else {
        return Shown {
            time,
            type_url: String::new(),
            fields: None,
            problem: Some("no body".into()),
        };
    };
    let (fields, problem) = match decode(type_url, value) {
        Ok(Some(d)) => (Some(d.fields), None),
        Ok(None) => (
            None,
            Some(format!("type not known ({} bytes)", value.len())),
        ),
        Err(e) => (None, Some(format!("undecodable: {e}"))),
    };
    Shown {
        time,
        type_url: type_url.clone(),
        fields,
        problem,
    }
}

/// `{"timestamp":...,"namespace":...,"topic":...,"type":...,"event":{...}}`
/// (`"event":null` and an `"error"` for a body it cannot show).
pub fn json_line(ev: &Received) -> String {
    let s = show(ev);
    let mut m = Map::new();
    m.insert("timestamp".into(), json!(s.time));
    m.insert("namespace".into(), json!(ev.namespace));
    m.insert("topic".into(), json!(ev.topic));
    m.insert("type".into(), json!(s.type_url));
    m.insert(
        "event".into(),
        s.fields.map(Value::Object).unwrap_or(Value::Null),
    );
    if let Some(p) = s.problem {
        m.insert("error".into(), json!(p));
    }
    Value::Object(m).to_string()
}

/// `TIME NAMESPACE TOPIC container=ID key=value ...`: sizes in IEC units,
/// the OOM source without its enum prefix, text quoted when it has spaces.
pub fn text_line(ev: &Received) -> String {
    let s = show(ev);
    let mut line = format!("{} {} {}", s.time, ev.namespace, ev.topic);
    let Some(fields) = s.fields else {
        line.push_str(&format!(
            " type={} ({})",
            quoted(&s.type_url),
            s.problem.unwrap_or_default()
        ));
        return line;
    };
    if let Some(id) = fields.get("container_id") {
        line.push_str(&format!(" container={}", text(id)));
    }
    for (key, value) in fields.iter().filter(|(k, _)| *k != "container_id") {
        let (key, value) = readable(key, value);
        line.push(' ');
        line.push_str(&key);
        line.push('=');
        line.push_str(&value);
    }
    line
}

/// One field as the readable line shows it.
fn readable(key: &str, value: &Value) -> (String, String) {
    if let (Some(k), Some(n)) = (key.strip_suffix("_bytes"), value.as_u64()) {
        return (k.to_string(), size(n));
    }
    if let (Some(k), Some(n)) = (key.strip_suffix("_kib"), value.as_u64()) {
        return (k.to_string(), size(n.saturating_mul(1024)));
    }
    if key == "source" {
        let s = value.as_str().unwrap_or_default();
        return (
            key.to_string(),
            s.strip_prefix("SOURCE_").unwrap_or(s).to_lowercase(),
        );
    }
    (key.to_string(), text(value))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => quoted(s),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Text as is, or JSON-quoted when it is empty or would split the line.
fn quoted(s: &str) -> String {
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        Value::String(s.to_string()).to_string()
    } else {
        s.to_string()
    }
}

/// Bytes in the largest IEC unit below them, one decimal when not whole.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while unit + 1 < UNITS.len() && n >= scale * 1024 {
        scale *= 1024;
        unit += 1;
    }
    if n.is_multiple_of(scale) {
        format!("{}{}", n / scale, UNITS[unit])
    } else {
        format!("{:.1}{}", n as f64 / scale as f64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, OOMKill, Source};
    use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
    use containerd_shim_protos::protobuf::Message;

    fn received(topic: &str, type_url: &str, body: Vec<u8>) -> Received {
        Received {
            timestamp: Some((1_700_000_000, 123_000_000)),
            namespace: "k8s.io".into(),
            topic: topic.into(),
            body: Some((type_url.into(), body)),
        }
    }

    fn oom_kill() -> Received {
        let e = OOMKill {
            container_id: "web".into(),
            sandbox_id: "pod1".into(),
            source: Source::SOURCE_MEMCG_EVENT.into(),
            victim_pid: Some(4242),
            victim_comm: "dd".into(),
            victim_rss_kib: Some(31_744),
            memcg_usage_bytes: Some(33_030_144),
            memcg_limit_bytes: Some(33_554_432),
            memcg_peak_bytes: Some(33_554_432),
            processes_killed: Some(1),
            group_kill: true,
            host_oom: Some(false),
            episodes: 1,
            ..Default::default()
        };
        received(
            proto::OOM_TOPIC,
            proto::OOM_KILL_TYPE_URL,
            e.write_to_bytes().unwrap(),
        )
    }

    #[test]
    fn readable_lines() {
        assert_eq!(
            text_line(&oom_kill()),
            "2023-11-14T22:13:20.123Z k8s.io /oomguard/oom container=web sandbox_id=pod1 \
             source=memcg_event victim_pid=4242 victim_comm=dd victim_rss=31MiB \
             memcg_usage=31.5MiB memcg_limit=32MiB memcg_peak=32MiB processes_killed=1 \
             group_kill=true host_oom=false episodes=1"
        );
        let mut e = TaskExit::new();
        e.container_id = "web".into();
        e.id = "web".into();
        e.pid = 4240;
        e.exit_status = 137;
        let line = text_line(&received(
            "/tasks/exit",
            "containerd.events.TaskExit",
            e.write_to_bytes().unwrap(),
        ));
        assert_eq!(
            line,
            "2023-11-14T22:13:20.123Z k8s.io /tasks/exit container=web id=web pid=4240 exit_status=137 exited_at=-"
        );
        let mut o = TaskOOM::new();
        o.container_id = "my app".into();
        let line = text_line(&received(
            "/tasks/oom",
            "containerd.events.TaskOOM",
            o.write_to_bytes().unwrap(),
        ));
        assert!(line.ends_with(r#"/tasks/oom container="my app""#), "{line}");
    }

    #[test]
    fn what_cannot_be_shown_says_why() {
        let r = received("/oomguard/new", "oomguard.events.v9.Future", vec![1, 2, 3]);
        assert_eq!(
            text_line(&r),
            "2023-11-14T22:13:20.123Z k8s.io /oomguard/new type=oomguard.events.v9.Future (type not known (3 bytes))"
        );
        let j: Value = serde_json::from_str(&json_line(&r)).unwrap();
        assert_eq!(j["event"], Value::Null);
        assert_eq!(j["error"], "type not known (3 bytes)");
        let r = Received {
            timestamp: None,
            namespace: "default".into(),
            topic: "/tasks/exit".into(),
            body: None,
        };
        assert_eq!(text_line(&r), r#"- default /tasks/exit type="" (no body)"#);
    }

    #[test]
    fn json_lines() {
        let line = json_line(&oom_kill());
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            r#"{"timestamp":"2023-11-14T22:13:20.123Z","namespace":"k8s.io","topic":"/oomguard/oom","type":"oomguard.events.v1.OOMKill","event":{"container_id":"web","sandbox_id":"pod1","source":"SOURCE_MEMCG_EVENT","victim_pid":4242,"victim_comm":"dd","victim_rss_kib":31744,"memcg_usage_bytes":33030144,"memcg_limit_bytes":33554432,"memcg_peak_bytes":33554432,"processes_killed":1,"group_kill":true,"host_oom":false,"episodes":1}}"#
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(1024), "1KiB");
        assert_eq!(size(1536), "1.5KiB");
        assert_eq!(size(32 << 20), "32MiB");
        assert_eq!(size(u64::MAX), "16777216.0TiB");
    }
}
