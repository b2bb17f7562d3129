//! Out-of-memory truth: the kernel's signals about a container's memcg
//! (counters, notifications, the kernel log) and the verdict made from them
//! when a process exits.

mod event_control;
pub mod figures;
pub mod kmsg;
pub mod memcg;
pub mod notify;
pub mod own_limit;
pub mod pressure;
mod recheck;
pub mod report;
mod sweep;
pub mod threshold;
mod verdict;
mod watch;

pub use own_limit::ContainerMemory;
pub use verdict::Verdict;
pub use watch::OomWatch;

/// Per-container switch for oom_group, over the shim-wide option.
pub const OOM_GROUP_ANNOTATION: &str = "io.oomguard.oom-group";

/// Whether the container's spec asks for (or against) killing the whole
/// container on an OOM kill: the kernel's `memory.oom.group` in the unified
/// resources, then oomguard's annotation, then the shim-wide default. A
/// value that is neither is an error naming it (a typo must not silently
/// fall back to the default).
pub fn oom_group_for(spec: &serde_json::Value, default: bool) -> Result<bool, String> {
    let excerpt = |v: &serde_json::Value| -> String { v.to_string().chars().take(80).collect() };
    if let Some(v) = spec.pointer("/linux/resources/unified/memory.oom.group") {
        return match v.as_str().map(str::trim) {
            Some("1") => Ok(true),
            Some("0") => Ok(false),
            _ => Err(format!(
                "linux.resources.unified[\"memory.oom.group\"] is {}, not \"0\" or \"1\"",
                excerpt(v)
            )),
        };
    }
    let Some(v) = spec
        .pointer("/annotations")
        .and_then(|a| a.get(OOM_GROUP_ANNOTATION))
    else {
        return Ok(default);
    };
    match v.as_str() {
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        _ => Err(format!(
            "annotation {OOM_GROUP_ANNOTATION} is {}, not \"true\" or \"false\"",
            excerpt(v)
        )),
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
        assert!(
            oom_group_for(&spec, false).unwrap(),
            "unified resources win"
        );
        let spec: serde_json::Value =
            serde_json::from_str(r#"{"annotations":{"io.oomguard.oom-group":"false"}}"#).unwrap();
        assert!(
            !oom_group_for(&spec, true).unwrap(),
            "annotation over the default"
        );
        assert!(oom_group_for(&serde_json::json!({}), true).unwrap());
        assert!(!oom_group_for(&serde_json::json!({}), false).unwrap());
    }

    #[test]
    fn bad_oom_group_values_are_named() {
        let spec = serde_json::json!({"annotations": {"io.oomguard.oom-group": "yes"}});
        let err = oom_group_for(&spec, true).unwrap_err();
        assert_eq!(
            err,
            "annotation io.oomguard.oom-group is \"yes\", not \"true\" or \"false\""
        );
        let spec =
            serde_json::json!({"linux": {"resources": {"unified": {"memory.oom.group": 1}}}});
        let err = oom_group_for(&spec, true).unwrap_err();
        assert!(err.contains("memory.oom.group\"] is 1"), "{err}");
    }
}
