//! One container's OOM watch: from Create to its init's exit.
//!
//! While the container runs, every kernel signal (memcg notification, kernel
//! log victim) is checked against the memcg's OOM kill counter; a new kill
//! is published as TaskOOM at once and, with oom_group, the whole container
//! is killed. At the init's exit the watch stops, the counter is re-read
//! synchronously (the memcg may be gone a moment later) and the verdict is
//! made, publishing a TaskOOM that was not yet published before the exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::events::task::TaskOOM;
use log::{debug, info, warn};
use oomguard_runtimes::{Exit, OciRuntime};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use super::kmsg::{self, Victim};
use super::memcg::{Memcg, OomCounters};
use super::notify::Notifier;
use super::verdict::{decide, episodes, Evidence, Verdict};
use crate::events::{Event, Publisher};

/// What raised a look at the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Memcg,
    Recheck,
    KernelLog,
}

/// The running watch task: a stop signal, and its handle, which hands the
/// kernel log subscription back so the exit path can drain it.
type Watcher = (
    oneshot::Sender<()>,
    JoinHandle<Option<broadcast::Receiver<Victim>>>,
);

pub struct OomWatch {
    id: String,
    memcg: Option<Memcg>,
    /// The memcg as the kernel log names it (relative to the hierarchy).
    memcg_rel: Option<String>,
    baseline: Option<OomCounters>,
    oom_group: bool,
    /// OOM episodes already published as TaskOOM. Held while publishing, so
    /// the watch and the exit path never both publish one episode.
    published: tokio::sync::Mutex<u64>,
    notifications: AtomicU64,
    /// The queue place of the last TaskOOM the watch published.
    queued_oom: AtomicU64,
    victims: Mutex<Vec<Victim>>,
    task: Mutex<Option<Watcher>>,
    publisher: Publisher,
    runtime: Arc<dyn OciRuntime>,
}

impl OomWatch {
    /// Starts watching the memcg of `pid` (the container's init).
    pub fn start(
        id: &str,
        pid: i32,
        oom_group: bool,
        publisher: Publisher,
        runtime: Arc<dyn OciRuntime>,
    ) -> Arc<OomWatch> {
        let (memcg, memcg_rel) = match (Memcg::of_pid(pid), Memcg::rel_of_pid(pid)) {
            (Ok(m), Ok(r)) => (Some(m), Some(r)),
            (Err(e), _) | (_, Err(e)) => {
                warn!("oom id={id}: memcg of pid {pid} unknown ({e}); verdict from wait status and kernel log only");
                (None, None)
            }
        };
        let baseline = memcg.as_ref().and_then(|m| match m.oom_counters() {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(
                    "oom id={id}: {}: counter unreadable ({e}); deltas lost",
                    m.path().display()
                );
                None
            }
        });
        let notifier = memcg.as_ref().and_then(|m| match Notifier::new(m) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!("oom id={id}: no memcg notification for {} ({e}); relying on kernel log and exit re-read", m.path().display());
                None
            }
        });
        info!(
            "oom id={id} watching memcg={:?} baseline_oom_kills={baseline:?} oom_group={oom_group} notifier={}",
            memcg.as_ref().map(|m| m.path().display().to_string()),
            notifier.is_some()
        );
        let watch = Arc::new(OomWatch {
            id: id.to_string(),
            memcg,
            memcg_rel,
            baseline,
            oom_group,
            published: tokio::sync::Mutex::new(0),
            notifications: AtomicU64::new(0),
            queued_oom: AtomicU64::new(0),
            victims: Mutex::new(Vec::new()),
            task: Mutex::new(None),
            publisher,
            runtime,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = tokio::spawn(watch.clone().run(notifier, kmsg::subscribe(), stop_rx));
        *watch.task.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop_tx, handle));
        watch
    }

    async fn run(
        self: Arc<Self>,
        mut notifier: Option<Notifier>,
        mut victims: broadcast::Receiver<Victim>,
        mut stop: oneshot::Receiver<()>,
    ) -> Option<broadcast::Receiver<Victim>> {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return Some(victims),
                r = async { notifier.as_ref()?.next().await.ok() }, if notifier.is_some() => {
                    match r {
                        Some(()) => {
                            self.notifications.fetch_add(1, Ordering::Relaxed);
                            if self.look(Source::Memcg).await {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                self.look(Source::Recheck).await;
                            }
                        }
                        None => {
                            warn!("oom id={}: memcg notifications stopped", self.id);
                            notifier = None;
                        }
                    }
                }
                v = victims.recv() => match v {
                    Ok(v) => {
                        if self.owns(&v) {
                            self.victims.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                            self.look(Source::KernelLog).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!("oom id={}: {n} kernel log victims not examined (reader lagged)", self.id);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }

    /// The container's memcg, when it could be resolved at Create.
    pub fn memcg(&self) -> Option<&Memcg> {
        self.memcg.as_ref()
    }

    fn owns(&self, v: &Victim) -> bool {
        self.memcg_rel.as_deref().is_some_and(|rel| v.in_memcg(rel))
    }

    /// OOM kills since the baseline, by the counters or the kernel log.
    fn kills(&self) -> (Option<OomCounters>, u64) {
        let counted = match (&self.memcg, self.baseline) {
            (Some(m), Some(base)) => match m.oom_counters() {
                Ok(n) => Some(n.since(base)),
                Err(e) => {
                    debug!("oom id={}: counter unreadable: {e}", self.id);
                    None
                }
            },
            _ => None,
        };
        let logged = self.victims.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        (counted, logged)
    }

    /// Returns whether a second look is due shortly.
    async fn look(&self, source: Source) -> bool {
        let (counted, logged) = self.kills();
        let c = counted.unwrap_or_default();
        let kills = c.kills.max(logged);
        let due = episodes(kills, c.group_kills, self.oom_group);
        let mut published = self.published.lock().await;
        if due > *published {
            info!(
                "oom id={} source={source:?} oom_kills={kills} group_kills={} (counter={} kernel_log={logged}) episodes={due}: publishing TaskOOM",
                self.id, c.group_kills, show(counted)
            );
            // Queued, not awaited: containerd may be away for minutes, and
            // neither the kill nor the next episode's TaskOOM waits for it.
            // The exit path waits for its delivery before releasing Wait.
            let seq = self.publisher.publish(self.oom_event());
            self.queued_oom.fetch_max(seq, Ordering::Relaxed);
            *published = due;
            drop(published);
            if self.oom_group {
                info!("oom id={}: oom_group: killing the whole container", self.id);
                self.kill_container().await;
            }
        } else if source == Source::Memcg {
            // The notification can come before the counter moves, or be a
            // sibling's OOM signalled down the tree: the caller looks again.
            debug!(
                "oom id={}: memcg notification, counter not moved yet",
                self.id
            );
            return true;
        }
        false
    }

    async fn kill_container(&self) {
        if let Err(e) = self
            .runtime
            .kill(&self.id, libc::SIGKILL as u32, true)
            .await
        {
            if !e.is_not_running() && !e.is_not_found() {
                warn!("oom id={}: oom_group kill failed: {e}", self.id);
            }
        }
    }

    fn oom_event(&self) -> Event {
        let mut ev = TaskOOM::new();
        ev.container_id = self.id.clone();
        Event::Oom(ev)
    }

    async fn publish(&self, published: &mut u64, episodes: u64) {
        if !self.publisher.publish_acked(self.oom_event()).await {
            warn!("oom id={}: TaskOOM refused by containerd", self.id);
        }
        *published = episodes;
    }

    /// The verdict for a container process's exit. For the init this ends
    /// the watch. A TaskOOM that is due is published (and acknowledged)
    /// before this returns, so the caller's TaskExit comes after it.
    pub async fn settle(&self, exit: &Exit, is_init: bool) -> Verdict {
        kmsg::drain_now();
        if is_init {
            let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((stop, handle)) = task {
                let _ = stop.send(());
                if let Ok(Some(mut rx)) = handle.await {
                    while let Ok(v) = rx.try_recv() {
                        if self.owns(&v) {
                            self.victims
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(v);
                        }
                    }
                }
            }
        }
        let (counted, logged) = self.kills();
        if counted.is_none() && self.memcg.is_some() {
            warn!(
                "oom id={}: memcg counter lost at exit; verdict from kernel log and wait status",
                self.id
            );
        }
        let victim = self
            .victims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|v| v.pid == exit.pid)
            .cloned();
        let notifications = self.notifications.load(Ordering::Relaxed);
        let c = counted.unwrap_or_default();
        let kills = c.kills.max(logged);
        let mut published = self.published.lock().await;
        let episodes = episodes(kills, c.group_kills, self.oom_group).max(u64::from(
            notifications > 0 && exit.status.killed_by(libc::SIGKILL),
        ));
        let lost = self.runtime.status_unavailable(&exit.status);
        if lost {
            info!(
                "oom id={} pid={}: {} is the runtime's stand-in for an unknown status",
                self.id, exit.pid, exit.status
            );
        }
        let evidence = Evidence {
            wait_status: (!lost).then_some(exit.status),
            oom_kills: Some(kills),
            oom_notifications: notifications,
            process_was_victim: victim.is_some(),
            already_reported: *published >= episodes,
            oom_group: self.oom_group,
            is_init,
        };
        let verdict = decide(&evidence);
        let runtime_says = self
            .runtime
            .exit_evidence(&self.id)
            .unwrap_or_else(|| "-".into());
        info!(
            "verdict id={} pid={} is_init={is_init} wait_status=\"{}\" oom_kills={kills} counter={} group_kills={} baseline={} kernel_log_victims={logged} victim={} notifications={notifications} already_published={} oom_group={} runtime={runtime_says} => oom_killed={} publish_oom={} exit_status={} ({})",
            self.id,
            exit.pid,
            exit.status,
            show(counted),
            c.group_kills,
            show(self.baseline),
            victim
                .as_ref()
                .map(|v| format!("{}({}) anon_rss_kb={:?} task_memcg={} global={}", v.pid, v.comm, v.anon_rss_kb, v.task_memcg, v.is_global()))
                .unwrap_or_else(|| "none".into()),
            *published,
            self.oom_group,
            verdict.oom_killed,
            verdict.oom_event,
            verdict.exit_status,
            verdict.reason
        );
        if verdict.oom_event {
            self.publish(&mut published, episodes.max(1)).await;
            drop(published);
        } else {
            drop(published);
            // A TaskOOM the watch queued is in before the caller releases
            // Wait and queues TaskExit.
            self.publisher
                .delivered(self.queued_oom.load(Ordering::Relaxed))
                .await;
        }
        if !is_init && self.oom_group && (verdict.oom_killed || verdict.oom_event) {
            info!(
                "oom id={}: oom_group: an exec was OOM-killed; killing the whole container",
                self.id
            );
            self.kill_container().await;
        }
        verdict
    }
}

/// A counter for the log: its kills, or why there is none.
fn show(counters: Option<OomCounters>) -> String {
    counters.map_or_else(|| "unreadable".into(), |c| c.kills.to_string())
}
