//! One container's OOM watch: from Create to its init's exit.
//!
//! While the container runs, every kernel signal (memcg notification, a
//! kernel log kill) is checked against the memcg's OOM kill counter; a new
//! kill is published as TaskOOM at once and, with oom_group, the whole
//! container is killed. At the init's exit the watch stops, the counter is
//! re-read synchronously (the memcg may be gone a moment later) and the
//! verdict is made, publishing a TaskOOM that was not yet published before
//! the exit. Each TaskOOM is followed in the queue by oomguard's own report
//! of that kill (`/oomguard/oom`, [`report`](super::report)): the victim the
//! kernel log named, the memcg's figures, the kills counted since the last
//! report.
//!
//! A memcg notification comes when the memcg *enters* OOM (v1 eventfd, v2
//! `oom`), before the OOM killer has chosen: it is not a kill. The watch
//! never waits for the kill inside its loop: it re-reads the counter on a
//! schedule of its own (`recheck`), a select branch with a deadline, 250 µs
//! apart at first, and on v1 reads the kernel log meanwhile (whose `Killed
//! process` record follows). The counter moves about half a millisecond
//! after the notification on an idle host, while the kernel wakes log
//! readers only at its next tick (printk's lazy irq_work), up to 10 ms later.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::TaskOOM;
use log::{debug, info, warn};
use oomguard_runtimes::{Exit, OciRuntime};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use super::figures::MemoryFigures;
use super::kmsg::{self, Logged, Victim};
use super::memcg::{Memcg, OomCounters};
use super::notify::Notifier;
use super::pressure;
use super::recheck::{Recheck, FOLLOW_UP};
use super::report::{OomReport, Signal};
use super::sweep::{self, Swept};
use super::verdict::{decide, episodes, Evidence, Verdict};
use crate::events::{Event, Publisher};

/// How long the oom_group kill waits for the container's processes to exit
/// before it falls back to the runtime.
const OOM_GROUP_KILL_LIMIT: Duration = Duration::from_secs(5);

/// When the kernel log is read again for a kill's victim, after the first
/// read right when the kill is seen. The kernel counts the kill, sends
/// SIGKILL, then logs it, so the record is nearly always there at once; the
/// retries cover a busy host. Bounded: a rate-limited report (an OOM storm)
/// has no record to wait for.
const VICTIM_RETRIES: [Duration; 2] = [Duration::from_millis(1), Duration::from_millis(4)];

/// What raised a look at the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Memcg,
    Recheck,
    KernelLog,
}

/// What a look at the counters found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A new OOM episode, published now. `took_log`: kernel log records
    /// were taken from the watch's subscription for its report, so the
    /// watch looks again as it would have for them.
    Published {
        took_log: bool,
    },
    /// The memcg entered OOM (v2 `oom` moved); no kill yet.
    Entered,
    Nothing,
}

/// The follow-up of an OOM notification whose kill is not confirmed yet:
/// re-reads of the counter on a schedule of their own, and on v1 the
/// kernel log read meanwhile.
#[derive(Default)]
struct FollowUp {
    /// Made at the first notification, kept (idle) after.
    recheck: Option<Recheck>,
    log: Option<kmsg::Hold>,
    active: bool,
}

impl FollowUp {
    fn pending(&self) -> bool {
        self.active
    }

    fn since(&self) -> Option<Instant> {
        self.recheck.as_ref().and_then(Recheck::since)
    }

    /// Starts the re-reads (and, with `log`, reads the kernel log).
    fn start(&mut self, now: Instant, log: bool) {
        if log && self.log.is_none() {
            self.log = Some(kmsg::hold(kmsg::Reason::MemcgOom));
        }
        self.recheck.get_or_insert_with(Recheck::new).start(now);
        self.active = true;
    }

    fn stop(&mut self) {
        self.log = None;
        self.active = false;
        if let Some(r) = &mut self.recheck {
            r.stop();
        }
    }

    async fn due(&self) {
        match &self.recheck {
            Some(r) => r.due().await,
            None => std::future::pending().await,
        }
    }

    /// After a re-read; false once the follow-up is over.
    fn advance(&mut self, now: Instant) -> bool {
        let more = self.recheck.as_mut().is_some_and(|r| r.advance(now));
        if !more {
            self.stop();
        }
        more
    }
}

/// The running watch task: a stop signal, and its handle, which hands the
/// kernel log subscription back so the exit path can drain it.
type Watcher = (
    oneshot::Sender<()>,
    JoinHandle<Option<broadcast::Receiver<Logged>>>,
);

/// What has been told to containerd so far. Held while publishing, so the
/// watch and the exit path never both publish one episode.
#[derive(Debug, Default)]
struct Published {
    /// OOM episodes published as TaskOOM.
    episodes: u64,
    /// OOM kills (counter or kernel log) the reports sent cover.
    kills: u64,
    /// Victims (of `OomWatch::victims`) the reports sent cover.
    victims: usize,
}

/// How a container's processes were killed (for the log line).
#[derive(Debug)]
pub enum KillAll {
    /// From its memcg (host processes).
    Swept(Swept),
    /// Through the runtime (`kill --all KILL`), and why.
    Runtime(String),
}

impl std::fmt::Display for KillAll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillAll::Swept(s) => write!(f, "swept from its memcg: {} process(es) killed", s.killed),
            KillAll::Runtime(how) => f.write_str(how),
        }
    }
}

pub struct OomWatch {
    id: String,
    /// The last OOM report published (the story people read comes from it).
    last_report: Mutex<Option<OomReport>>,
    /// The pod sandbox, for the OOM reports.
    sandbox_id: Option<String>,
    memcg: Option<Memcg>,
    /// The memcg as the kernel log names it (relative to the hierarchy).
    memcg_rel: Option<String>,
    baseline: Option<OomCounters>,
    oom_group: bool,
    published: tokio::sync::Mutex<Published>,
    /// OOM notifications: v1 eventfd wake-ups, v2 `oom` moves.
    notifications: AtomicU64,
    /// v2 `oom` (since the baseline) at the last look.
    ooms_seen: AtomicU64,
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
        sandbox_id: Option<String>,
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
        if let (Some(Memcg::V1(path)), Some(rel)) = (&memcg, &memcg_rel) {
            // v1: a global OOM kill fires no memcg notification; host
            // memory pressure arms the kernel log. The hierarchy's root is
            // the memcg's path without its relative part.
            let depth = rel.split('/').filter(|c| !c.is_empty()).count();
            if let Some(root) = path.ancestors().nth(depth) {
                pressure::start(root);
            }
        }
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
            sandbox_id,
            memcg,
            memcg_rel,
            baseline,
            oom_group,
            published: tokio::sync::Mutex::new(Published::default()),
            notifications: AtomicU64::new(0),
            ooms_seen: AtomicU64::new(0),
            queued_oom: AtomicU64::new(0),
            victims: Mutex::new(Vec::new()),
            last_report: Mutex::new(None),
            task: Mutex::new(None),
            publisher,
            runtime,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = tokio::spawn(watch.clone().run(notifier, kmsg::subscribe(), stop_rx));
        *watch.task.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop_tx, handle));
        watch
    }

    /// The watch loop. Every branch returns at once: a pending re-read is a
    /// deadline of its own, so a notification, a kernel log kill or a
    /// re-read, whichever shows the kill first, publishes it.
    async fn run(
        self: Arc<Self>,
        mut notifier: Option<Notifier>,
        mut log: broadcast::Receiver<Logged>,
        mut stop: oneshot::Receiver<()>,
    ) -> Option<broadcast::Receiver<Logged>> {
        let mut follow = FollowUp::default();
        loop {
            let source = tokio::select! {
                biased;
                _ = &mut stop => return Some(log),
                r = async { notifier.as_ref()?.next().await.ok() }, if notifier.is_some() => match r {
                    Some(()) => Source::Memcg,
                    None => {
                        warn!("oom id={}: memcg notifications stopped", self.id);
                        notifier = None;
                        continue;
                    }
                },
                _ = follow.due(), if follow.pending() => Source::Recheck,
                m = log.recv() => match m {
                    Ok(Logged::Victim(v)) => {
                        if !self.owns(&v) {
                            continue;
                        }
                        self.record_victim(v);
                        Source::KernelLog
                    }
                    // Whose kill it was, only the counters tell.
                    Ok(Logged::Kill { .. }) => Source::KernelLog,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!("oom id={}: {n} kernel log kills not examined (reader lagged); re-reading the counter", self.id);
                        Source::KernelLog
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let mut source = source;
            while self.signal(source, &mut follow, &mut log).await {
                source = Source::KernelLog;
            }
        }
    }

    /// Whether another TaskOOM can still be due (with oom_group, one per
    /// container).
    async fn more_possible(&self) -> bool {
        !(self.oom_group && self.published.lock().await.episodes >= 1)
    }

    async fn signal(
        self: &Arc<Self>,
        source: Source,
        follow: &mut FollowUp,
        log: &mut broadcast::Receiver<Logged>,
    ) -> bool {
        let now = Instant::now();
        let v1 = matches!(self.memcg, Some(Memcg::V1(_)));
        if source == Source::Memcg && v1 {
            self.notifications.fetch_add(1, Ordering::Relaxed);
            if self.more_possible().await {
                // A new OOM: follow it up from now. On v1 the kernel log is
                // read meanwhile: a kill whose counter move the re-reads
                // would see late (the OOM killer waits for its lock in a
                // storm) wakes the watch through its record.
                follow.start(now, true);
            }
        }
        let mut again = false;
        match self.look(source, follow.since(), log).await {
            Found::Published { took_log } => {
                follow.stop();
                again = took_log;
            }
            Found::Entered if !follow.pending() && self.more_possible().await => {
                // v2: memory.events is signalled again for the kill, but at
                // most every 10 ms (cgroup_file_notify): re-read sooner.
                follow.start(now, false);
            }
            _ => {
                if source == Source::Recheck && !follow.advance(Instant::now()) {
                    debug!(
                        "oom id={}: no OOM kill within {FOLLOW_UP:?} of the memcg notification",
                        self.id
                    );
                }
            }
        }
        if follow.pending() && !self.more_possible().await {
            follow.stop();
        }
        again
    }

    fn owns(&self, v: &Victim) -> bool {
        self.memcg_rel.as_deref().is_some_and(|rel| v.in_memcg(rel))
    }

    /// What is known of the container's OOM kill, for people
    /// (`report`): the last report published, else (a kill no report
    /// went out for) the kernel log's victim and the memcg's figures now.
    pub fn story(&self) -> crate::story::Story {
        if let Some(r) = self
            .last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return crate::story::Story::from(r);
        }
        let victims = self
            .victims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (counted, logged) = self.kills();
        let kills = counted.map_or(0, |c| c.kills).max(logged);
        let signal = self.signal_of(counted.is_none_or(|c| c.kills == 0 && c.ooms == 0));
        let mut r = OomReport::new(&self.id, self.sandbox_id.as_deref(), signal);
        // The largest victim is the one that explains the kill.
        r.victim = victims
            .iter()
            .max_by_key(|v| v.anon_rss_kb.unwrap_or(0))
            .cloned();
        r.memory = self.figures_of_the_memcg_that_ran_out(r.victim.as_ref());
        r.processes_killed = Some(kills).filter(|k| *k > 0);
        r.group_kill = self.oom_group || !self.runtime.processes_on_host();
        crate::story::Story::from(&r)
    }

    /// The memory figures of the memcg the kernel log says ran out (the
    /// pod's, for a gVisor sandbox or a pod-level limit), else the
    /// container's own.
    fn figures_of_the_memcg_that_ran_out(&self, victim: Option<&Victim>) -> MemoryFigures {
        let Some(own) = &self.memcg else {
            return MemoryFigures::default();
        };
        let ran_out = match (
            own,
            &self.memcg_rel,
            victim.and_then(|v| v.oom_memcg.as_deref()),
        ) {
            (Memcg::V1(path) | Memcg::V2(path), Some(rel), Some(oom)) if oom != rel.as_str() => {
                let root = path
                    .to_str()
                    .and_then(|p| p.strip_suffix(rel.trim_end_matches('/')));
                root.map(|r| {
                    let dir = PathBuf::from(format!(
                        "{}/{}",
                        r.trim_end_matches('/'),
                        oom.trim_start_matches('/')
                    ));
                    match own {
                        Memcg::V1(_) => Memcg::V1(dir),
                        Memcg::V2(_) => Memcg::V2(dir),
                    }
                })
            }
            _ => None,
        };
        MemoryFigures::read(ran_out.as_ref().unwrap_or(own))
    }

    /// Keeps a victim of this container's memcg (once: the exit path may
    /// read a record the watch already took).
    fn record_victim(&self, v: Victim) {
        if !self.owns(&v) {
            return;
        }
        let mut victims = self.victims.lock().unwrap_or_else(|p| p.into_inner());
        if !victims
            .iter()
            .any(|k| k.pid == v.pid && k.task_memcg == v.task_memcg)
        {
            victims.push(v);
        }
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

    /// Reads the counters; publishes a new OOM episode (and, with oom_group,
    /// kills the container in the background).
    async fn look(
        self: &Arc<Self>,
        source: Source,
        since: Option<Instant>,
        log: &mut broadcast::Receiver<Logged>,
    ) -> Found {
        let (counted, logged) = self.kills();
        let c = counted.unwrap_or_default();
        let entered = c.ooms > self.ooms_seen.fetch_max(c.ooms, Ordering::Relaxed);
        if entered {
            self.notifications.fetch_add(1, Ordering::Relaxed);
        }
        let kills = c.kills.max(logged);
        let due = episodes(kills, c.group_kills, self.oom_group);
        let mut published = self.published.lock().await;
        if due > published.episodes {
            // Queued, not awaited: containerd may be away for minutes, and
            // neither the kill nor the next episode's TaskOOM waits for it.
            // The exit path waits for its delivery before releasing Wait.
            self.publisher.publish(self.oom_event());
            let new_episodes = due - published.episodes;
            published.episodes = due;
            let after = since
                .map(|t| format!("{:.3}", t.elapsed().as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "-".into());
            if self.oom_group {
                let me = self.clone();
                tokio::spawn(async move {
                    // After the TaskOOM's Forward is on the wire (its writer
                    // task was woken before this one runs).
                    tokio::task::yield_now().await;
                    let how = me.kill_all(OOM_GROUP_KILL_LIMIT).await;
                    info!(
                        "oom id={}: oom_group: killed the whole container ({how})",
                        me.id
                    );
                });
            }
            // The report follows its TaskOOM (the lock keeps the exit path's
            // TaskExit behind it); its victim is read meanwhile.
            let took_log = self.catch_victim(published.victims, log).await;
            // Kills the counter does not show came from the kernel log.
            let signal = self.signal_of(source == Source::KernelLog || c.kills == 0);
            let report = self.report(signal, (kills, c.group_kills), &mut published, new_episodes);
            let seq = self.publisher.publish(Event::OomKill(report.to_message()));
            self.queued_oom.fetch_max(seq, Ordering::Relaxed);
            drop(published);
            info!(
                "oom id={} source={source:?} oom_kills={kills} group_kills={} (counter={} kernel_log={logged}) episodes={due} ms_after_notification={after}: published TaskOOM and /oomguard/oom {}",
                self.id, c.group_kills, show(counted), report.describe()
            );
            return Found::Published { took_log };
        }
        drop(published);
        if entered {
            debug!(
                "oom id={}: memcg entered OOM (oom={}), no kill yet",
                self.id, c.ooms
            );
            return Found::Entered;
        }
        if source == Source::Memcg {
            // The notification can come before the counter moves, or be a
            // sibling's OOM signalled down the tree.
            debug!("oom id={}: memcg notification, no kill yet", self.id);
        }
        Found::Nothing
    }

    /// Kills every process of the container: for host processes (runc)
    /// straight from its memcg, else (or when that fails) through the
    /// runtime (`kill --all KILL`; runsc reaches the container's processes
    /// inside the sandbox). A sweep waits up to `limit` for them to exit.
    pub async fn kill_all(&self, limit: Duration) -> KillAll {
        if let Some(why) = self.sweep_refused() {
            return KillAll::Runtime(format!("{why}; {}", self.runtime_kill().await));
        }
        let (Some(memcg), Some(rel)) = (&self.memcg, &self.memcg_rel) else {
            return KillAll::Runtime(self.runtime_kill().await);
        };
        match sweep::sweep(memcg, rel, limit).await {
            Ok(s) if s.left == 0 => KillAll::Swept(s),
            Ok(s) => KillAll::Runtime(format!(
                "{} process(es) still in the memcg after {limit:?} ({} killed); {}",
                s.left,
                s.killed,
                self.runtime_kill().await
            )),
            Err(e) => KillAll::Runtime(format!(
                "sweep of {}: {e}; {}",
                memcg.path().display(),
                self.runtime_kill().await
            )),
        }
    }

    /// Why the container's processes cannot be killed from its memcg.
    fn sweep_refused(&self) -> Option<String> {
        if !self.runtime.processes_on_host() {
            return Some("processes inside a sandbox".into());
        }
        let rel = self.memcg_rel.as_deref()?;
        let own = match sweep::own_rel() {
            Ok(own) => own,
            Err(e) => return Some(format!("the shim's own memcg unknown ({e})")),
        };
        sweep::sweepable(rel, &own, &self.id).err()
    }

    async fn runtime_kill(&self) -> String {
        match self
            .runtime
            .kill(&self.id, libc::SIGKILL as u32, true)
            .await
        {
            Ok(()) => "kill --all KILL".into(),
            Err(e) if e.is_not_running() || e.is_not_found() => {
                format!("kill --all KILL: nothing left ({e})")
            }
            Err(e) => {
                warn!("oom id={}: kill --all KILL failed: {e}", self.id);
                format!("kill --all KILL failed: {e}")
            }
        }
    }

    fn oom_event(&self) -> Event {
        let mut ev = TaskOOM::new();
        ev.container_id = self.id.clone();
        Event::Oom(ev)
    }

    /// Reads the kernel log now (and after short waits) until it has named
    /// a victim of this memcg beyond the `known` ones, or gives up: first
    /// what the shim's reader already took from it (waiting in `log`, the
    /// watch's own subscription), then what is left in it.
    /// Returns whether it took records from `log`.
    async fn catch_victim(&self, known: usize, log: &mut broadcast::Receiver<Logged>) -> bool {
        let mut took = false;
        if !kmsg::readable() {
            return took;
        }
        let found = || self.victims.lock().unwrap_or_else(|p| p.into_inner()).len() > known;
        for wait in std::iter::once(Duration::ZERO).chain(VICTIM_RETRIES) {
            if found() {
                return took;
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            // Taken from the loop's subscription: the caller looks again
            // as the loop would have for them.
            while let Ok(m) = log.try_recv() {
                took = true;
                if let Logged::Victim(v) = m {
                    self.record_victim(v);
                }
            }
            let mut fresh = kmsg::subscribe();
            kmsg::drain_now();
            while let Ok(m) = fresh.try_recv() {
                if let Logged::Victim(v) = m {
                    self.record_victim(v);
                }
            }
        }
        took
    }

    /// Which signal showed the kill: under gVisor any kill in the
    /// sandbox's host memcg is the sentry's; else the kernel log when it
    /// showed the kill first, or the memcg.
    fn signal_of(&self, kernel_log_first: bool) -> Signal {
        if !self.runtime.processes_on_host() {
            Signal::GvisorSentry
        } else if kernel_log_first {
            Signal::KernelLog
        } else {
            Signal::MemcgEvent
        }
    }

    /// The report of the episodes just published: the victims and kills
    /// since the last report, the memcg's figures now.
    fn report(
        &self,
        signal: Signal,
        (kills, group_kills): (u64, u64),
        published: &mut Published,
        episodes: u64,
    ) -> OomReport {
        let mut r = OomReport::new(&self.id, self.sandbox_id.as_deref(), signal);
        {
            let victims = self.victims.lock().unwrap_or_else(|p| p.into_inner());
            r.victim = victims
                .get(published.victims..)
                .and_then(|v| v.first())
                .cloned();
            published.victims = victims.len();
        }
        r.memory = self.figures_of_the_memcg_that_ran_out(r.victim.as_ref());
        // No kill counted yet (a notification and a SIGKILL): unknown, not 0.
        r.processes_killed = Some(kills.saturating_sub(published.kills)).filter(|n| *n > 0);
        published.kills = published.kills.max(kills);
        r.group_kill = group_kills > 0 || self.oom_group || !self.runtime.processes_on_host();
        r.episodes = episodes.max(1);
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        r
    }

    /// The verdict for a container process's exit. For the init this ends
    /// the watch. A TaskOOM that is due is published (and acknowledged)
    /// before this returns, so the caller's TaskExit comes after it.
    pub async fn settle(&self, exit: &Exit, is_init: bool) -> Verdict {
        // The kernel log from where this shim last read it: a victim logged
        // before the reap is seen even when nothing armed the log.
        let fresh = kmsg::subscribe();
        let read = kmsg::drain_now();
        let mut pending = Vec::new();
        if is_init {
            let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((stop, handle)) = task {
                let _ = stop.send(());
                if let Ok(Some(rx)) = handle.await {
                    pending.push(rx);
                }
            }
        }
        pending.push(fresh.resubscribe());
        drop(fresh);
        for mut rx in pending {
            while let Ok(m) = rx.try_recv() {
                if let Logged::Victim(v) = m {
                    self.record_victim(v);
                }
            }
        }
        debug!(
            "oom id={}: {read} kernel log record(s) read at exit",
            self.id
        );
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
        let c = counted.unwrap_or_default();
        let notifications = self.notifications.load(Ordering::Relaxed).max(c.ooms);
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
            already_reported: published.episodes >= episodes,
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
            published.episodes,
            self.oom_group,
            verdict.oom_killed,
            verdict.oom_event,
            verdict.exit_status,
            verdict.reason
        );
        if verdict.oom_event {
            // The report right behind its TaskOOM, both before the caller's
            // TaskExit; only then is containerd's answer awaited.
            let acked = self.publisher.publish_acked(self.oom_event());
            let signal = self.signal_of(c.kills == 0 && logged > 0);
            let due = episodes.max(1);
            let new_episodes = due.saturating_sub(published.episodes);
            let report = self.report(signal, (kills, c.group_kills), &mut published, new_episodes);
            self.publisher.publish(Event::OomKill(report.to_message()));
            published.episodes = due;
            info!(
                "oom id={} pid={}: published TaskOOM and /oomguard/oom at exit {}",
                self.id,
                exit.pid,
                report.describe()
            );
            if !acked.await {
                warn!("oom id={}: TaskOOM refused by containerd", self.id);
            }
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
            let how = self.kill_all(OOM_GROUP_KILL_LIMIT).await;
            info!(
                "oom id={}: oom_group: killed the whole container ({how})",
                self.id
            );
        }
        verdict
    }
}

/// A counter for the log: its kills, or why there is none.
fn show(counters: Option<OomCounters>) -> String {
    counters.map_or_else(|| "unreadable".into(), |c| c.kills.to_string())
}
