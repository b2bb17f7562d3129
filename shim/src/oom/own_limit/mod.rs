//! A container's own memory limit where the host cannot enforce it.
//!
//! The containers of a gVisor pod share one sandbox process and so one host
//! memcg: the kernel enforces the pod's limit only, and gVisor ignores a
//! container's own `linux.resources.memory.limit`. Where the runtime
//! accounts each container's usage ([`OwnMemory::Shared`]), the shim
//! enforces the limit itself: one watch per sandbox ([`sandbox`]) wakes when
//! the sandbox's host memcg reaches a level ([`levels`]) below which no
//! container can have used its headroom, stops the sandbox, reads every
//! container, kills those over their limit (their TaskOOM is published and
//! acknowledged before their exit), and lets the sandbox go on. The level is
//! armed before a container starts. An idle pod wakes nothing but a reading
//! every [`sandbox::SAFETY`].

pub mod levels;
pub mod sandbox;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use oomguard_runtimes::{OciRuntime, OwnMemory, SharedSandbox};

use super::Verdict;
use crate::events::Publisher;
use sandbox::{Member, SandboxLimits, Slot};

pub use sandbox::quiesce;

/// A container's `linux.resources.memory.limit`, when it has one.
pub fn limit_of(spec: &serde_json::Value) -> Option<u64> {
    spec.pointer("/linux/resources/memory/limit")
        .and_then(|v| v.as_i64())
        .filter(|l| *l > 0)
        .map(|l| l as u64)
}

/// What the watch saw and did when it killed a container.
#[derive(Debug, Clone)]
pub struct Exceeded {
    pub usage: u64,
    pub limit: u64,
    pub sandbox: u64,
    pub source: String,
    /// What woke the round that found it ([`sandbox::Wake`]).
    pub wake: &'static str,
    /// Whether the sandbox was stopped while it was read and killed.
    pub frozen: bool,
    /// From the wake to the kill's answer.
    pub woke_to_kill: Duration,
    pub killed: Instant,
    /// The sandbox's answer to the kill.
    pub kill: Result<(), String>,
}

/// One container's own memory: how it is read and, with a limit, its place
/// in its sandbox's watch.
pub struct ContainerMemory {
    id: String,
    /// Its pod's sandbox, for the OOM report of a kill.
    sandbox_id: Option<String>,
    limit: Option<u64>,
    publisher: Publisher,
    shared: Mutex<Option<Arc<dyn SharedSandbox>>>,
    watch: Mutex<Option<Arc<SandboxLimits>>>,
    slot: Slot,
}

impl ContainerMemory {
    pub fn new(
        id: &str,
        sandbox_id: Option<String>,
        limit: Option<u64>,
        publisher: Publisher,
    ) -> Arc<Self> {
        Arc::new(ContainerMemory {
            id: id.to_string(),
            sandbox_id,
            limit,
            publisher,
            shared: Mutex::new(None),
            watch: Mutex::new(None),
            slot: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// Before Start: asks the runtime how the container's own usage is read
    /// and, with a limit, has its sandbox's watch count it before its first
    /// instruction runs. `pid` is the init's (for a gVisor container, the
    /// sandbox's) whose host memcg holds the usage.
    pub async fn arm(
        &self,
        runtime: Arc<dyn OciRuntime>,
        pid: i32,
        warning: Option<Arc<crate::warning::Sink>>,
    ) {
        let shared = match runtime.own_memory(&self.id).await {
            OwnMemory::HostMemcg => return,
            OwnMemory::Unavailable(why) => {
                self.unenforceable(&why);
                return;
            }
            OwnMemory::Shared(s) => s,
        };
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());
        let Some(limit) = self.limit else {
            info!(
                "own-memory id={}: usage from {}; no limit of its own",
                self.id,
                shared.source(&self.id)
            );
            return;
        };
        let member = Member::new(
            &self.id,
            self.sandbox_id.clone(),
            limit,
            runtime,
            self.slot.clone(),
            warning,
        );
        match SandboxLimits::join(shared, pid, self.publisher.clone(), member).await {
            Ok(watch) => {
                info!(
                    "own-limit id={} limit={limit} source={}: enforcing (armed before start)",
                    self.id,
                    watch.source(&self.id)
                );
                *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(watch);
            }
            Err(e) => self.unenforceable(&e),
        }
    }

    fn unenforceable(&self, why: &str) {
        match self.limit {
            Some(limit) => warn!(
                "own-limit id={} limit={limit}: cannot be enforced: {why}; only the sandbox's host memcg limit (the pod's) holds",
                self.id
            ),
            None => debug!("own-memory id={}: no usage of its own: {why}", self.id),
        }
    }

    fn watch(&self) -> Option<Arc<SandboxLimits>> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After Start: whether it started.
    pub async fn started(&self, ok: bool) {
        if let Some(w) = self.watch() {
            w.started(&self.id, ok).await;
        }
    }

    /// One reading of the container's own usage, where the runtime keeps
    /// one: (bytes, where from).
    pub async fn usage(&self) -> Option<Result<(u64, String), String>> {
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let reading = shared.usage(&[&self.id]).await;
        Some(reading.and_then(|u| match u.containers.into_iter().next() {
            Some(Ok(bytes)) => Ok((bytes, shared.source(&self.id))),
            Some(Err(e)) => Err(e),
            None => Err("no figure for the container".into()),
        }))
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The story of the kill the watch made, if it made one.
    pub async fn story(&self) -> Option<crate::story::Story> {
        let e = self.slot.lock().await.clone()?;
        Some(crate::story::Story {
            source: crate::story::text::Source::OwnLimit,
            usage_bytes: Some(e.usage),
            limit_bytes: Some(e.limit),
            peak_bytes: Some(e.usage),
            group_kill: true,
            ..Default::default()
        })
    }

    /// At the init's exit: leaves the watch (after any round in flight)
    /// and, if the watch killed it, makes the exit an OOM kill (its TaskOOM
    /// is out and acknowledged by now).
    pub async fn settle(&self, verdict: Verdict) -> Verdict {
        let exited = Instant::now();
        let watch = self.watch.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = watch {
            w.leave(&self.id).await;
        }
        let Some(e) = self.slot.lock().await.clone() else {
            return verdict;
        };
        let reason = format!(
            "usage {} over its own limit {} ({}); its processes were killed",
            e.usage, e.limit, e.source
        );
        // Seen over its limit, but gone before the kill: it exceeded the
        // limit all the same (the kernel would have killed it), and the log
        // says the kill came late.
        let kill = match &e.kill {
            Ok(()) => "sent".to_string(),
            Err(why) => format!(
                "late(exited before the kill: {why}; its own status: {})",
                verdict.exit_status
            ),
        };
        info!(
            "verdict id={} own_limit: usage={} limit={} sandbox_usage={} source={} wake={} frozen={} woke_to_kill={:?} kill={kill} kill_to_exit={:?}; host verdict: oom_killed={} exit_status={} ({}) => oom_killed=true publish_oom=false (published before the kill) exit_status=137",
            self.id,
            e.usage,
            e.limit,
            e.sandbox,
            e.source,
            e.wake,
            e.frozen,
            e.woke_to_kill,
            exited.saturating_duration_since(e.killed),
            verdict.oom_killed,
            verdict.exit_status,
            verdict.reason
        );
        Verdict {
            oom_killed: true,
            oom_event: false,
            exit_status: 137,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn limits_from_specs() {
        let spec: serde_json::Value =
            serde_json::from_str(r#"{"linux":{"resources":{"memory":{"limit":67108864}}}}"#)
                .unwrap();
        assert_eq!(limit_of(&spec), Some(64 * MIB));
        for text in [
            r#"{}"#,
            r#"{"linux":{"resources":{"memory":{}}}}"#,
            r#"{"linux":{"resources":{"memory":{"limit":0}}}}"#,
            r#"{"linux":{"resources":{"memory":{"limit":-1}}}}"#,
            r#"{"linux":{"resources":{"memory":{"limit":"64M"}}}}"#,
        ] {
            let spec: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(limit_of(&spec), None, "{text}");
        }
    }
}
