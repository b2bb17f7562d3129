//! Out-of-memory truth: the kernel's signals about a container's memcg
//! (counters, notifications, the kernel log) and the verdict made from them
//! when a process exits.

pub mod container_limit;
pub mod kmsg;
pub mod memcg;
mod notify;
mod threshold;
mod verdict;
mod watch;

pub use container_limit::ContainerMemory;
pub use verdict::Verdict;
pub use watch::OomWatch;

/// Per-container switch for oom_group, over the shim-wide option.
pub const OOM_GROUP_ANNOTATION: &str = "io.oomguard.oom-group";

/// Whether the container's spec asks for (or against) killing the whole
/// container on an OOM kill: the kernel's `memory.oom.group` in the unified
/// resources, then oomguard's annotation, then the shim-wide default.
pub fn oom_group_for(spec: &serde_json::Value, default: bool) -> bool {
    let unified = spec
        .pointer("/linux/resources/unified/memory.oom.group")
        .and_then(|v| v.as_str());
    if let Some(v) = unified {
        return v.trim() == "1";
    }
    match spec
        .pointer("/annotations")
        .and_then(|a| a.get(OOM_GROUP_ANNOTATION))
        .and_then(|v| v.as_str())
    {
        Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_group_precedence() {
        let spec: serde_json::Value = serde_json::from_str(
            r#"{"annotations":{"io.oomguard.oom-group":"false"},"linux":{"resources":{"unified":{"memory.oom.group":"1"}}}}"#,
        )
        .unwrap();
        assert!(oom_group_for(&spec, false), "unified resources win");
        let spec: serde_json::Value =
            serde_json::from_str(r#"{"annotations":{"io.oomguard.oom-group":"false"}}"#).unwrap();
        assert!(!oom_group_for(&spec, true), "annotation over the default");
        assert!(oom_group_for(&serde_json::json!({}), true));
        assert!(!oom_group_for(&serde_json::json!({}), false));
    }
}
