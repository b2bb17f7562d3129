//! A container's own memory limit where the host cannot enforce it.
//!
//! The containers of a gVisor pod share one sandbox process and so one host
//! memcg: the kernel enforces the pod's limit only, and gVisor ignores a
//! container's own `linux.resources.memory.limit`. Where the runtime
//! accounts each container's usage ([`OwnMemory::Sampled`]), this watch
//! enforces the limit itself: when the usage is over it, TaskOOM is
//! published (and acknowledged), then the container's processes are killed
//! (`kill --all`, not the pod), and its exit is reported as 137.
//!
//! Cost: samples are taken only when the container may be near its limit.
//! The sandbox's host memcg holds every container's memory plus the
//! sandbox's own overhead, so while the host usage stays below
//! `sandbox total + headroom` no container can have used up its headroom:
//! a cgroup v1 threshold at that level wakes the watch (event-driven, no
//! timer). Once the sandbox's overhead exceeds a container's headroom the
//! bound proves nothing: the container is sampled every [`NEAR`] (above half
//! its limit) or [`FAR`], and whenever the host memcg grew by [`STEP`]. A
//! sample every [`SAFETY`] covers memory the sentry recycles before it
//! returns it to the host. On cgroup v2 (no threshold notification) the
//! host usage is read every [`V2_POLL`] instead.
//!
//! A sample in flight when the container exits is finished and judged: it
//! may have waited in the sentry behind the very allocation that ended the
//! container.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::TaskOOM;
use log::{debug, info, warn};
use oomguard_runtimes::{OciRuntime, OwnMemory, OwnUsage, OwnUsageSampler};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::memcg::Memcg;
use super::threshold::{self, Threshold};
use super::Verdict;
use crate::events::{Event, Publisher};

/// Sampling period while the container is above half its limit and the
/// host memcg cannot vouch for it.
pub const NEAR: Duration = Duration::from_millis(50);
/// The same below half its limit.
pub const FAR: Duration = Duration::from_millis(250);
/// The longest the watch trusts the host memcg alone.
pub const SAFETY: Duration = Duration::from_secs(5);
/// cgroup v2: how often the host usage is compared with the level.
pub const V2_POLL: Duration = Duration::from_millis(100);
/// Near the limit, a sample whenever the host memcg grew this much.
pub const STEP: u64 = 8 << 20;
/// The v1 threshold is checked every few hundred KiB of charges per CPU;
/// the level is set this much lower to wake in time.
pub const GUARD: u64 = 2 << 20;

/// A container's `linux.resources.memory.limit`, when it has one.
pub fn limit_of(spec: &serde_json::Value) -> Option<u64> {
    spec.pointer("/linux/resources/memory/limit")
        .and_then(|v| v.as_i64())
        .filter(|l| *l > 0)
        .map(|l| l as u64)
}

/// When to look at the container's usage next: when the host memcg's usage
/// reaches `host_at` (if known), or after `after`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextLook {
    pub host_at: Option<u64>,
    pub after: Duration,
}

/// From one sample and the host memcg's usage.
///
/// While the host usage stays below `all containers + headroom`, the
/// container cannot have used its headroom: wake there (or after
/// [`SAFETY`]). Once the sandbox's overhead is larger than the headroom the
/// bound proves nothing: sample on a timer ([`NEAR`] above half the limit,
/// else [`FAR`]), and also as soon as the host grows by [`STEP`], so a fast
/// allocation is followed sample by sample.
pub fn next_look(sample: OwnUsage, limit: u64, host: Option<u64>) -> NextLook {
    let headroom = limit.saturating_sub(sample.container);
    let timer = if sample.container >= limit / 2 {
        NEAR
    } else {
        FAR
    };
    // The host memcg bounds the sentry's accounting only if it holds it.
    let Some(host) = host.filter(|h| *h >= sample.sandbox) else {
        return NextLook {
            host_at: None,
            after: timer,
        };
    };
    let level = sample
        .sandbox
        .saturating_add(headroom)
        .saturating_sub(GUARD);
    if level > host {
        NextLook {
            host_at: Some(level),
            after: SAFETY,
        }
    } else {
        NextLook {
            host_at: Some(host.saturating_add(STEP)),
            after: timer,
        }
    }
}

/// What the watch saw when it acted.
#[derive(Debug, Clone)]
pub struct Exceeded {
    pub usage: u64,
    pub limit: u64,
    pub sandbox: u64,
    pub source: String,
    pub at: Instant,
}

/// One container's own memory: its usage reader and, with a limit, the
/// watch that enforces it.
pub struct ContainerMemory {
    id: String,
    limit: Option<u64>,
    publisher: Publisher,
    sampler: Mutex<Option<Arc<dyn OwnUsageSampler>>>,
    /// Held while TaskOOM is published and the container killed, so the
    /// exit's verdict waits for both.
    exceeded: tokio::sync::Mutex<Option<Exceeded>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ContainerMemory {
    pub fn new(id: &str, limit: Option<u64>, publisher: Publisher) -> Arc<Self> {
        Arc::new(ContainerMemory {
            id: id.to_string(),
            limit,
            publisher,
            sampler: Mutex::new(None),
            exceeded: tokio::sync::Mutex::new(None),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        })
    }

    /// After Start: asks the runtime how the container's own usage is read
    /// and, with a limit, starts enforcing it. `pid` is the init's (for a
    /// gVisor container, the sandbox's) whose host memcg bounds the usage.
    pub fn begin(self: &Arc<Self>, runtime: Arc<dyn OciRuntime>, pid: i32) {
        let me = self.clone();
        let stop = self.stop.subscribe();
        let handle = tokio::spawn(async move { me.run(runtime, pid, stop).await });
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// One sample of the container's own usage, where the runtime keeps one.
    pub async fn usage(&self) -> Option<Result<(OwnUsage, String), String>> {
        let sampler = self
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(sampler.sample().await.map(|u| (u, sampler.source())))
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    async fn run(
        self: Arc<Self>,
        runtime: Arc<dyn OciRuntime>,
        pid: i32,
        stop: watch::Receiver<bool>,
    ) {
        // Not cut short by the exit: the probe may be the one sample that
        // saw the container over its limit (it can wait behind the
        // allocation); it is bounded by the sample timeout.
        let support = runtime.own_memory(&self.id).await;
        let (sampler, first) = match support {
            OwnMemory::HostMemcg => return,
            OwnMemory::Unavailable(why) => {
                match self.limit {
                    Some(limit) => warn!(
                        "own-limit id={} limit={limit}: cannot be enforced: {why}; only the sandbox's host memcg limit (the pod's) holds",
                        self.id
                    ),
                    None => debug!("own-memory id={}: no usage of its own: {why}", self.id),
                }
                return;
            }
            OwnMemory::Sampled { sampler, first } => (sampler, first),
        };
        *self.sampler.lock().unwrap_or_else(|p| p.into_inner()) = Some(sampler.clone());
        let Some(limit) = self.limit else {
            info!(
                "own-memory id={}: usage from {}; no limit of its own",
                self.id,
                sampler.source()
            );
            return;
        };
        let host = match Memcg::of_pid(pid) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!(
                    "own-limit id={}: host memcg of pid {pid} unknown ({e}); sampling on a timer",
                    self.id
                );
                None
            }
        };
        info!(
            "own-limit id={} limit={limit} source={} host_memcg={}: enforcing",
            self.id,
            sampler.source(),
            host.as_ref()
                .map_or_else(|| "-".into(), |m| m.path().display().to_string())
        );
        self.enforce(runtime, sampler, first, limit, host, stop)
            .await;
    }

    async fn enforce(
        &self,
        runtime: Arc<dyn OciRuntime>,
        sampler: Arc<dyn OwnUsageSampler>,
        first: OwnUsage,
        limit: u64,
        host: Option<Memcg>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        let mut first = Some(first);
        loop {
            // A sample in flight when the container exits is finished and
            // judged: it may have waited behind the allocation that ended it.
            let sample = match first.take() {
                Some(s) => Ok(s),
                None => sampler.sample().await,
            };
            let sample = match sample {
                Ok(s) => {
                    failures = 0;
                    s
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        warn!(
                            "own-limit id={}: usage unreadable ({failures} in a row): {e}",
                            self.id
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            };
            if sample.container > limit {
                self.exceeded(runtime.as_ref(), sample, limit, sampler.source())
                    .await;
                return;
            }
            if *stop.borrow() {
                return;
            }
            let host_usage = host.as_ref().and_then(|m| threshold::usage(m).ok());
            let next = next_look(sample, limit, host_usage);
            debug!(
                "own-limit id={} usage={} limit={limit} sandbox={} host={host_usage:?} next={next:?}",
                self.id, sample.container, sample.sandbox
            );
            let level = next.host_at.zip(host.as_ref());
            let reached = async {
                match level {
                    Some((level, memcg)) => Self::host_reaches(memcg, level).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = reached => {}
                _ = tokio::time::sleep(next.after) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Resolves when the host usage reaches `level` (v1 threshold; v2, or a
    /// threshold that cannot be set: a timer).
    async fn host_reaches(memcg: &Memcg, level: u64) {
        match Threshold::arm(memcg, level) {
            Ok(t) => {
                let _ = t.crossed().await;
            }
            Err(_) => loop {
                tokio::time::sleep(V2_POLL).await;
                if threshold::usage(memcg).map_or(true, |u| u >= level) {
                    break;
                }
            },
        }
    }

    async fn exceeded(&self, runtime: &dyn OciRuntime, s: OwnUsage, limit: u64, source: String) {
        let mut exceeded = self.exceeded.lock().await;
        info!(
            "own-limit id={} usage={} limit={limit} sandbox_usage={} source={source}: over its own memory limit; publishing TaskOOM and killing its processes",
            self.id, s.container, s.sandbox
        );
        let mut ev = TaskOOM::new();
        ev.container_id = self.id.clone();
        if !self.publisher.publish_acked(Event::Oom(ev)).await {
            warn!(
                "own-limit id={}: TaskOOM not acknowledged by containerd",
                self.id
            );
        }
        let at = Instant::now();
        *exceeded = Some(Exceeded {
            usage: s.container,
            limit,
            sandbox: s.sandbox,
            source,
            at,
        });
        match runtime.kill(&self.id, libc::SIGKILL as u32, true).await {
            Ok(()) => info!(
                "own-limit id={}: its processes killed in {:?}",
                self.id,
                at.elapsed()
            ),
            Err(e) if e.is_not_running() || e.is_not_found() => {
                info!("own-limit id={}: already gone ({e})", self.id)
            }
            Err(e) => warn!("own-limit id={}: kill failed: {e}", self.id),
        }
    }

    /// At the init's exit: ends the watch and, if it acted, makes the exit
    /// an OOM kill (its TaskOOM is already out).
    pub async fn settle(&self, verdict: Verdict) -> Verdict {
        self.stop.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let Some(e) = self.exceeded.lock().await.clone() else {
            return verdict;
        };
        let reason = format!(
            "usage {} over its own limit {} ({}); its processes were killed",
            e.usage, e.limit, e.source
        );
        info!(
            "verdict id={} own_limit: usage={} limit={} sandbox_usage={} source={} acted={:?} ago; host verdict: oom_killed={} exit_status={} ({}) => oom_killed=true publish_oom=false (published before the kill) exit_status=137",
            self.id,
            e.usage,
            e.limit,
            e.sandbox,
            e.source,
            e.at.elapsed(),
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

    fn sample(container: u64, sandbox: u64) -> OwnUsage {
        OwnUsage { container, sandbox }
    }

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

    /// Figures from runsc 20240729 (pod of three idle containers: 2 MiB
    /// each, 6 MiB together, host memcg 26 MiB).
    #[test]
    fn idle_container_waits_on_the_host_memcg() {
        let s = sample(2 * MIB, 6 * MIB);
        assert_eq!(
            next_look(s, 64 * MIB, Some(26 * MIB)),
            NextLook {
                host_at: Some(6 * MIB + 62 * MIB - GUARD),
                after: SAFETY
            }
        );
    }

    #[test]
    fn near_the_limit_the_host_memcg_proves_nothing() {
        // 50 MiB used of 64: 14 MiB headroom, but the sandbox's overhead
        // (host 74 - sandbox 54 = 20 MiB) could hide that much.
        let s = sample(50 * MIB, 54 * MIB);
        assert_eq!(
            next_look(s, 64 * MIB, Some(74 * MIB)),
            NextLook {
                host_at: Some(74 * MIB + STEP),
                after: NEAR
            }
        );
        // Seen while a 300 MB read() was filling: 28 MiB of 64, the host 40
        // MiB ahead of the sentry's accounting. Below half its limit: a
        // slow timer, and the host's growth wakes the watch.
        let s = sample(28 * MIB, 28 * MIB);
        assert_eq!(
            next_look(s, 64 * MIB, Some(68 * MIB)),
            NextLook {
                host_at: Some(68 * MIB + STEP),
                after: FAR
            }
        );
    }

    #[test]
    fn without_a_usable_host_memcg_sample_on_a_timer() {
        let s = sample(2 * MIB, 6 * MIB);
        let timer = NextLook {
            host_at: None,
            after: FAR,
        };
        assert_eq!(next_look(s, 64 * MIB, None), timer);
        // The host memcg holds less than the sentry accounts: it does not
        // hold the sandbox's memory, so it bounds nothing.
        assert_eq!(next_look(s, 64 * MIB, Some(4 * MIB)), timer);
    }

    #[test]
    fn at_or_over_the_limit() {
        let s = sample(64 * MIB, 70 * MIB);
        assert_eq!(
            next_look(s, 64 * MIB, Some(90 * MIB)),
            NextLook {
                host_at: Some(90 * MIB + STEP),
                after: NEAR
            }
        );
        let s = sample(u64::MAX, u64::MAX);
        assert_eq!(
            next_look(s, 64 * MIB, Some(u64::MAX)),
            NextLook {
                host_at: Some(u64::MAX),
                after: NEAR
            }
        );
    }
}
