//! The watch over one sandbox's containers that have memory limits of
//! their own (a gVisor pod), and the rounds that enforce them.
//!
//! A round reads every member's usage in one call and kills each one over
//! its limit. A round woken because the host memcg rose to the level
//! ([`super::levels`]) first stops the whole sandbox (`freeze`): the sentry
//! lets a task in a system call finish the call and stops it before it runs
//! application code again, so the allocation that woke the watch is
//! complete and counted when the reading is taken, and the task that made
//! it cannot go on to exit with status 0 before the kill lands. Measured
//! (runsc 20240729, ptrace and systrap): without the freeze, a reading
//! taken at the wake saw 40–60 MiB of an 80 MiB `read()` and the container
//! completed; with it, every burst from 68 to 300 MiB was killed (see
//! `runtimes/src/gvisor/NOTES.md` §7).
//!
//! The levels are armed before a member's container starts (it counts as
//! using nothing until its memory cgroup exists), so a burst in its first
//! milliseconds is watched too, and the round after its Start pauses the
//! sandbox as well. Rounds woken otherwise (a fall of the host memcg, a
//! member joining, the safety reading every [`SAFETY`]) do not stop it. A
//! pause is sent before the round waits for one in flight: on a saturated
//! host a reading took 50 ms, and a pause queued behind it came after the
//! burst it was for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::TaskOOM;
use log::{debug, info, warn};
use oomguard_runtimes::{OciRuntime, SandboxUsage, SharedSandbox};
use tokio::sync::{watch, OwnedMutexGuard};
use tokio::task::JoinHandle;

use super::levels::{self, HostMemory, Levels, Which};
use super::Exceeded;
use crate::events::{Event, Publisher};
use crate::oom::memcg::Memcg;
use crate::oom::report::{OomReport, Signal};
use crate::oom::threshold::{self, Threshold};
use crate::warning::level::Episode;
use crate::warning::Sink;

/// The longest the levels are trusted without a reading: memory a container
/// freed is handed to another before the sentry returns it to the host
/// (within ~0.1 s), unseen by the host memcg.
pub const SAFETY: Duration = Duration::from_secs(5);
/// cgroup v2 (no usage threshold notification): how often the host usage
/// is compared with the levels.
pub const V2_POLL: Duration = Duration::from_millis(100);
/// Longer than the sentry's pause between scans for committed pages.
const RESCAN: Duration = Duration::from_millis(11);
/// How long a member's Start waits for the levels that count it to be
/// armed.
const ARM_WAIT: Duration = Duration::from_secs(1);

/// Why a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The host memcg rose to the level: the sandbox is frozen first.
    Rise,
    /// The host memcg fell below the lower level.
    Fall,
    /// A container joined (before its Start).
    Join,
    /// A container's Start returned: the sandbox is paused for the
    /// reading too (the container may be allocating already).
    Start,
    /// Nothing woke the watch for [`SAFETY`].
    Safety,
    /// No host memcg to watch: a reading every [`V2_POLL`].
    Timer,
}

impl Wake {
    fn name(self) -> &'static str {
        match self {
            Wake::Rise => "rise",
            Wake::Fall => "fall",
            Wake::Join => "join",
            Wake::Start => "start",
            Wake::Safety => "safety",
            Wake::Timer => "timer",
        }
    }
}

/// Where a container's own-limit story is kept until its exit is settled.
pub type Slot = Arc<tokio::sync::Mutex<Option<Exceeded>>>;

/// A container whose limit the watch enforces.
pub struct Member {
    pub id: String,
    pub sandbox_id: Option<String>,
    pub limit: u64,
    pub runtime: Arc<dyn OciRuntime>,
    pub slot: Slot,
    /// Its Start returned: from then on its memory cgroup must exist.
    started: bool,
    /// Bytes at the last reading (0 before its cgroup exists).
    usage: u64,
    /// The memory warning: each reading feeds its episode.
    warning: Option<(Episode, Arc<Sink>)>,
}

impl Member {
    pub fn new(
        id: &str,
        sandbox_id: Option<String>,
        limit: u64,
        runtime: Arc<dyn OciRuntime>,
        slot: Slot,
        warning: Option<Arc<Sink>>,
    ) -> Member {
        Member {
            id: id.to_string(),
            sandbox_id,
            limit,
            runtime,
            slot,
            started: false,
            usage: 0,
            warning: warning.map(|s| (Episode::new(limit, s.share), s)),
        }
    }
}

/// The armed levels, numbered so a joining container can wait for the
/// ones that count it.
#[derive(Debug, Clone, Copy, Default)]
struct Armed {
    generation: u64,
    levels: Option<Levels>,
}

/// The members, and whether the watch's task runs for them.
#[derive(Default)]
struct Members {
    list: Vec<Member>,
    running: bool,
}

pub struct SandboxLimits {
    key: String,
    sandbox: Arc<dyn SharedSandbox>,
    host: Option<Memcg>,
    publisher: Publisher,
    members: Mutex<Members>,
    /// Held by a round from before the freeze until the verdicts are
    /// recorded and the sandbox thawed.
    round: tokio::sync::Mutex<()>,
    /// Levels computed by the last round (`generation` counts rounds).
    levels: watch::Sender<Armed>,
    /// The generation the watch has armed thresholds for.
    armed: watch::Sender<u64>,
    failures: Mutex<u32>,
}

/// Every watch of this shim, by sandbox.
fn registry() -> &'static Mutex<HashMap<String, Weak<SandboxLimits>>> {
    static WATCHES: OnceLock<Mutex<HashMap<String, Weak<SandboxLimits>>>> = OnceLock::new();
    WATCHES.get_or_init(Default::default)
}

/// The nice value of the shim's runtime thread once it watches a sandbox.
const WATCH_NICE: i32 = -10;

/// A rise must become a pause before the allocation that caused it returns
/// (tens of ms): on a host whose CPUs are all busy the shim's thread waited
/// ~35 ms for one. The watch thread is mostly asleep, so it runs ahead of
/// busy work at little cost. Once per shim, on the runtime thread (nice is
/// per thread on Linux).
fn raise_priority() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: getpriority and setpriority only read their arguments.
        // (getpriority's -1 is also an error; the shim's nice is not -1 in
        // practice, and a wrong base only changes its children's nice.)
        let original = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        oomguard_runtimes::reaper::set_child_nice(original);
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WATCH_NICE) };
        if r == 0 {
            info!(
                "own-limit: the shim's thread runs at nice {WATCH_NICE} while it watches sandboxes (what it starts at {original})"
            );
        } else {
            warn!(
                "own-limit: cannot raise the shim's priority (nice {WATCH_NICE}): {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Set at shutdown: no round freezes a sandbox any more.
static CLOSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// At shutdown: waits (at most `limit`) for rounds in flight, so no sandbox
/// is left frozen by an exiting shim, and lets no new round freeze one.
pub async fn quiesce(limit: Duration) {
    CLOSING.store(true, std::sync::atomic::Ordering::SeqCst);
    let watches: Vec<Arc<SandboxLimits>> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    let all = async {
        for w in &watches {
            drop(w.round.lock().await);
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        warn!("own-limit: a round still running at shutdown after {limit:?}");
    }
}

impl SandboxLimits {
    /// Adds `member` to its sandbox's watch (made on first use) and returns
    /// once levels that count it are armed. `pid` is the sandbox process,
    /// whose host memcg holds every container's memory. An error: the
    /// sandbox could not be read (the member is not kept).
    pub async fn join(
        sandbox: Arc<dyn SharedSandbox>,
        pid: i32,
        publisher: Publisher,
        member: Member,
    ) -> Result<Arc<SandboxLimits>, String> {
        let key = sandbox.key();
        let watch = {
            let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
            reg.retain(|_, w| w.strong_count() > 0);
            match reg.get(&key).and_then(Weak::upgrade) {
                Some(w) => w,
                None => {
                    let host = match Memcg::of_pid(pid) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            warn!("own-limit sandbox={key}: host memcg of pid {pid} unknown ({e}); reading on a timer");
                            None
                        }
                    };
                    let w = Arc::new(SandboxLimits {
                        key: key.clone(),
                        sandbox,
                        host,
                        publisher,
                        members: Mutex::new(Members::default()),
                        round: tokio::sync::Mutex::new(()),
                        levels: watch::channel(Armed::default()).0,
                        armed: watch::channel(0).0,
                        failures: Mutex::new(0),
                    });
                    reg.insert(key.clone(), Arc::downgrade(&w));
                    w
                }
            }
        };
        let id = member.id.clone();
        raise_priority();
        {
            let mut members = watch.members();
            members.list.push(member);
            if !members.running {
                members.running = true;
                let w = watch.clone();
                tokio::spawn(async move { w.run().await });
            }
        }
        let (generation, read) = watch.round(Wake::Join, Instant::now()).await;
        if let Err(e) = read {
            watch.leave(&id).await;
            return Err(e);
        }
        let mut armed = watch.armed.subscribe();
        if tokio::time::timeout(ARM_WAIT, armed.wait_for(|g| *g >= generation))
            .await
            .is_err()
        {
            warn!("own-limit id={id}: levels not armed within {ARM_WAIT:?}; starting anyway");
        }
        Ok(watch)
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn source(&self, id: &str) -> String {
        self.sandbox.source(id)
    }

    /// After the member's Start: a failed Start takes it out; a started
    /// one is read at once (its memory cgroup must exist now).
    pub async fn started(self: &Arc<Self>, id: &str, ok: bool) {
        if !ok {
            self.leave(id).await;
            return;
        }
        if let Some(m) = self.members().list.iter_mut().find(|m| m.id == id) {
            m.started = true;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.round(Wake::Start, Instant::now()).await;
        });
    }

    /// At the member's exit: after any round in flight, which may have
    /// found it over its limit.
    pub async fn leave(&self, id: &str) {
        let _round = self.round.lock().await;
        let empty = {
            let mut members = self.members();
            members.list.retain(|m| m.id != id);
            members.list.is_empty()
        };
        if empty {
            // Wakes the watch, which ends.
            self.levels.send_modify(|a| {
                a.generation += 1;
                a.levels = None;
            });
        }
    }

    /// The watch: waits for the armed thresholds, the safety timer, new
    /// levels and the registrations it has in flight, never for a
    /// registration alone (each waits for an RCU grace period in the kernel,
    /// tens of ms; a rise meanwhile must still be seen). Ends when the last
    /// member has left.
    async fn run(self: Arc<Self>) {
        let mut levels = self.levels.subscribe();
        let mut armed = Thresholds::default();
        let mut safety = tokio::time::Instant::now() + SAFETY;
        loop {
            let Armed {
                generation,
                levels: current,
            } = *levels.borrow_and_update();
            let Some(current) = current else {
                {
                    let mut members = self.members();
                    if members.list.is_empty() && generation > 0 {
                        members.running = false;
                        debug!("own-limit sandbox={}: no member left; watch ends", self.key);
                        return;
                    }
                }
                if levels.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let wake = match &self.host {
                Some(memcg) => {
                    self.wait(memcg, &current, generation, &mut armed, &mut levels, safety)
                        .await
                }
                // No host memcg: a reading on a timer.
                None => tokio::select! {
                    changed = levels.changed() => { if changed.is_err() { return; } None }
                    _ = tokio::time::sleep(V2_POLL) => Some(Wake::Timer),
                },
            };
            if let Some(wake) = wake {
                // An unreadable sandbox is logged by the round; the levels
                // stay as they were.
                let _ = self.round(wake, Instant::now()).await;
                safety = tokio::time::Instant::now() + SAFETY;
            }
        }
    }

    /// One step of the watch: `Some` when a round is due, `None` when the
    /// levels or the thresholds changed.
    async fn wait(
        &self,
        memcg: &Memcg,
        current: &Levels,
        generation: u64,
        armed: &mut Thresholds,
        levels: &mut watch::Receiver<Armed>,
        safety: tokio::time::Instant,
    ) -> Option<Wake> {
        let usage = threshold::usage(memcg).ok();
        if armed.registering.is_none() && !armed.refused {
            match armed.needed(current, usage) {
                Some((which, level)) => armed.register(memcg, which, level),
                None => {
                    self.armed.send_replace(generation);
                }
            }
        }
        if armed.refused {
            // cgroup v2 (no threshold notification), or a threshold the
            // kernel refused: the levels are compared on a timer.
            self.armed.send_replace(generation);
        }
        // A level the usage passed before its threshold was armed: the
        // kernel signals crossings only.
        if let Some(wake) = self.host_beyond(current) {
            return Some(wake);
        }
        let poll = async {
            if armed.refused {
                tokio::time::sleep(V2_POLL).await
            } else {
                std::future::pending().await
            }
        };
        let registered = async {
            match armed.registering.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = crossed(armed.rise.as_ref().map(|(_, t)| t)) => {
                debug!(
                    "own-limit sandbox={}: rise threshold {:?} crossed; host usage now {:?}",
                    self.key,
                    armed.rise.as_ref().map(|(l, _)| l),
                    threshold::usage(memcg).ok()
                );
                Some(self.host_beyond(current).unwrap_or(Wake::Rise))
            }
            _ = crossed(armed.fall.as_ref().map(|(_, t)| t)) => Some(Wake::Fall),
            done = registered => {
                armed.registered(done, &self.key);
                None
            }
            changed = levels.changed() => { changed.ok()?; None }
            _ = poll => self.host_beyond(current),
            _ = tokio::time::sleep_until(safety) => Some(Wake::Safety),
        }
    }

    /// Whether the host usage is at or past a level now.
    fn host_beyond(&self, current: &Levels) -> Option<Wake> {
        let usage = threshold::usage(self.host.as_ref()?).ok()?;
        if usage >= current.rise {
            Some(Wake::Rise)
        } else if current.fall.is_some_and(|f| usage <= f) {
            Some(Wake::Fall)
        } else {
            None
        }
    }

    /// One round; returns the generation of the levels it computed, and
    /// whether the sandbox could be read.
    async fn round(&self, wake: Wake, woke: Instant) -> (u64, Result<(), String>) {
        // The pause first, before waiting for a round in flight (its reading
        // may be slow on a busy sandbox): pauses nest, and each is resumed
        // below by the round that made it.
        let freeze = matches!(wake, Wake::Rise | Wake::Start)
            && !CLOSING.load(std::sync::atomic::Ordering::SeqCst);
        let frozen = freeze && self.freeze().await;
        let froze_in = woke.elapsed();
        let _round = self.round.lock().await;
        let ids: Vec<String> = self.members().list.iter().map(|m| m.id.clone()).collect();
        if ids.is_empty() {
            if frozen {
                self.thaw().await;
            }
            return (self.levels.borrow().generation, Ok(()));
        }
        // The host memcg first: what a member allocates between the two
        // readings is then counted twice (in its usage and in the host's
        // growth to come), never missed.
        let host_before = self.host.as_ref().and_then(|m| host_memory(m).ok());
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut reading = self.sandbox.usage(&id_refs).await;
        if frozen && self.stale(&reading) {
            // The sentry scans for newly committed pages at most every 10
            // ms after a sandbox-wide scan (an application reading
            // /proc/meminfo makes one); frozen, nothing moves meanwhile.
            tokio::time::sleep(RESCAN).await;
            reading = self.sandbox.usage(&id_refs).await;
        }
        let read_in = woke.elapsed();
        let mut killed = Vec::new();
        let sandbox_total = match &reading {
            Ok(u) => {
                *self.failures.lock().unwrap_or_else(|p| p.into_inner()) = 0;
                killed = self.judge(&ids, u, wake, frozen, woke).await;
                Some(u.sandbox)
            }
            Err(e) => {
                let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                *failures += 1;
                if *failures == 1 || failures.is_power_of_two() {
                    warn!(
                        "own-limit sandbox={}: usage unreadable ({} in a row): {e}",
                        self.key, *failures
                    );
                }
                None
            }
        };
        if frozen {
            self.thaw().await;
        }
        let thawed_in = woke.elapsed();
        // A kill the sandbox refused goes through the runtime's command.
        for (member_runtime, id, result) in killed {
            if let Err(e) = result {
                info!("own-limit id={id}: sandbox kill refused ({e}); runtime kill --all");
                match member_runtime.kill(&id, libc::SIGKILL as u32, true).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_running() || e.is_not_found() => {
                        info!("own-limit id={id}: already gone ({e})")
                    }
                    Err(e) => warn!("own-limit id={id}: kill failed: {e}"),
                }
            }
        }
        let generation = self.next_levels(sandbox_total, host_before);
        let levels = self.levels.borrow().levels;
        let usages: Vec<String> = self
            .members()
            .list
            .iter()
            .map(|m| format!("{}:{}/{}", m.id, m.usage, m.limit))
            .collect();
        debug!(
            "own-limit sandbox={} round wake={} frozen={frozen} froze_in={froze_in:?} read_in={read_in:?} thawed_in={thawed_in:?} host={host_before:?} sandbox_usage={sandbox_total:?} members=[{}] levels={levels:?}",
            self.key,
            wake.name(),
            usages.join(" ")
        );
        (generation, reading.map(drop))
    }

    /// Whether a reading that finds nobody over a limit leaves much of the
    /// host's shmem (the sentry's memory file) charged to no container:
    /// normally the charged total exceeds it (measured: 1.9 MiB charged,
    /// 0.8 MiB shmem on an idle pod), so the scan behind the reading was
    /// skipped.
    fn stale(&self, reading: &Result<SandboxUsage, String>) -> bool {
        let Ok(u) = reading else {
            return false;
        };
        let members = self.members();
        let anyone_over = u
            .containers
            .iter()
            .zip(&members.list)
            .any(|(c, m)| c.as_ref().is_ok_and(|v| *v > m.limit));
        let shmem = self
            .host
            .as_ref()
            .and_then(|m| threshold::shmem(m).ok().flatten());
        !anyone_over && shmem.is_some_and(|s| s.saturating_sub(u.sandbox) > levels::GUARD)
    }

    async fn thaw(&self) {
        if let Err(e) = self.sandbox.thaw().await {
            warn!(
                "own-limit sandbox={}: thaw failed: {e} (a sandbox left paused stays so)",
                self.key
            );
        }
    }

    /// Stops the sandbox; false if it could not be (the round reads
    /// without).
    async fn freeze(&self) -> bool {
        match self.sandbox.freeze().await {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    "own-limit sandbox={}: freeze failed: {e}; reading without",
                    self.key
                );
                false
            }
        }
    }

    /// Records each member's usage and kills those over their limit:
    /// TaskOOM is queued at once, and its acknowledgement awaited holding
    /// the member's slot, so its exit is settled after both. Returns the
    /// kills made (the sandbox's answer to each).
    async fn judge(
        &self,
        ids: &[String],
        reading: &SandboxUsage,
        wake: Wake,
        frozen: bool,
        woke: Instant,
    ) -> Vec<(Arc<dyn OciRuntime>, String, Result<(), String>)> {
        let mut over = Vec::new();
        let mut warned = Vec::new();
        {
            let mut members = self.members();
            let mut unenforceable = Vec::new();
            for (id, usage) in ids.iter().zip(&reading.containers) {
                let Some(m) = members.list.iter_mut().find(|m| &m.id == id) else {
                    continue;
                };
                match usage {
                    Ok(u) => {
                        m.usage = *u;
                        if let Some((episode, sink)) = m.warning.as_mut() {
                            if episode.observe(*u) {
                                warned.push((sink.clone(), *u, m.limit));
                            }
                        }
                        if *u > m.limit {
                            over.push((
                                m.id.clone(),
                                m.sandbox_id.clone(),
                                *u,
                                m.limit,
                                m.slot.clone(),
                                m.runtime.clone(),
                            ));
                        }
                    }
                    // Before Start, no cgroup yet: it uses nothing.
                    Err(_) if !m.started => m.usage = 0,
                    Err(e) => {
                        warn!(
                            "own-limit id={} limit={}: cannot be enforced: the container has no memory cgroup in its sandbox (runsc makes one only for a container whose spec mounts cgroupfs at /sys/fs/cgroup, as CRI's do): {e}; only the sandbox's host memcg limit (the pod's) holds",
                            m.id, m.limit
                        );
                        unenforceable.push(m.id.clone());
                    }
                }
            }
            members.list.retain(|m| !unenforceable.contains(&m.id));
        }
        for (sink, usage, limit) in warned {
            sink.warned(
                usage,
                limit,
                crate::proto::Trigger::TRIGGER_GVISOR_READING,
                "gVisor sandbox reading",
            );
        }
        let mut kills = Vec::new();
        for (id, sandbox_id, usage, limit, slot, runtime) in over {
            // Never wait here (the sandbox may be frozen): a slot in use is
            // an earlier round's kill still publishing its TaskOOM.
            let Ok(mut guard): Result<OwnedMutexGuard<Option<Exceeded>>, _> = slot.try_lock_owned()
            else {
                continue;
            };
            if guard.is_some() {
                // Killed by an earlier round; its exit is on the way.
                continue;
            }
            let result = self.sandbox.kill(&id).await;
            let killed = Instant::now();
            let woke_to_kill = killed.duration_since(woke);
            info!(
                "own-limit id={id} usage={usage} limit={limit} sandbox_usage={} source={} wake={} frozen={frozen} woke_to_kill={woke_to_kill:?} kill={}: over its own memory limit; its processes killed, publishing TaskOOM and /oomguard/oom",
                reading.sandbox,
                self.source(&id),
                wake.name(),
                match &result {
                    Ok(()) => "sent".to_string(),
                    Err(e) => format!("refused({e})"),
                }
            );
            *guard = Some(Exceeded {
                usage,
                limit,
                sandbox: reading.sandbox,
                source: self.source(&id),
                wake: wake.name(),
                frozen,
                woke_to_kill,
                killed,
                kill: result.clone(),
            });
            let mut ev = TaskOOM::new();
            ev.container_id = id.clone();
            let acked = self.publisher.publish_acked(Event::Oom(ev));
            // Its report right behind it: the container's own figures, as
            // gVisor accounts them; the kill took all its processes.
            let mut report = OomReport::new(&id, sandbox_id.as_deref(), Signal::OwnLimit);
            report.memory.usage = Some(usage);
            report.memory.limit = Some(limit);
            report.group_kill = true;
            self.publisher.publish(Event::OomKill(report.to_message()));
            let who = id.clone();
            tokio::spawn(async move {
                if !acked.await {
                    warn!("own-limit id={who}: TaskOOM not acknowledged by containerd");
                }
                drop(guard);
            });
            kills.push((runtime, id, result));
        }
        kills
    }

    /// The levels after a reading (kept as they were if there was none);
    /// returns their generation.
    fn next_levels(&self, sandbox_total: Option<u64>, host: Option<HostMemory>) -> u64 {
        let members: Vec<levels::Member> = self
            .members()
            .list
            .iter()
            .map(|m| levels::Member {
                usage: m.usage,
                limit: m.limit,
            })
            .collect();
        let next = match (sandbox_total, &self.host) {
            _ if members.is_empty() => None,
            (Some(total), Some(_)) => match host {
                Some(host) => Some(levels::levels(host, total, &members)),
                None => {
                    debug!("own-limit sandbox={}: host memcg unreadable", self.key);
                    self.levels.borrow().levels
                }
            },
            // Without a host memcg the watch reads on a timer.
            (Some(total), None) => Some(levels::levels(
                HostMemory {
                    usage: total,
                    shmem: None,
                },
                total,
                &members,
            )),
            (None, _) => self.levels.borrow().levels,
        };
        self.levels.send_modify(|a| {
            a.generation += 1;
            a.levels = next;
        });
        self.levels.borrow().generation
    }
}

/// Resolves when the threshold is crossed; never without one.
async fn crossed(t: Option<&Threshold>) {
    match t {
        Some(t) => {
            let _ = t.crossed().await;
        }
        None => std::future::pending().await,
    }
}

/// The v1 thresholds armed on the sandbox's host memcg, with their levels.
/// Each registration costs the kernel an RCU grace period (7–38 ms
/// measured), so a threshold is kept while it is still safe: a rise level
/// above the usage and at or below the computed one (an earlier wake costs
/// a round, never a miss), a fall level below the usage and at or above the
/// computed one. One registration at a time runs on a blocking thread; the
/// threshold it replaces stays armed meanwhile.
#[derive(Default)]
struct Thresholds {
    rise: Option<(u64, Threshold)>,
    fall: Option<(u64, Threshold)>,
    registering: Option<JoinHandle<(Which, u64, std::io::Result<Threshold>)>>,
    /// The kernel refused a threshold (cgroup v2 has none).
    refused: bool,
}

impl Thresholds {
    /// The threshold to register next for `levels`, if any.
    fn needed(&self, levels: &Levels, usage: Option<u64>) -> Option<(Which, u64)> {
        levels::to_arm(
            self.rise.as_ref().map(|(l, _)| *l),
            self.fall.as_ref().map(|(l, _)| *l),
            levels,
            usage?,
        )
    }

    fn register(&mut self, memcg: &Memcg, which: Which, level: u64) {
        let memcg = memcg.clone();
        self.registering = Some(tokio::spawn(async move {
            (
                which,
                level,
                Threshold::arm_off_runtime(&memcg, level).await,
            )
        }));
    }

    fn registered(
        &mut self,
        done: Result<(Which, u64, std::io::Result<Threshold>), tokio::task::JoinError>,
        key: &str,
    ) {
        self.registering = None;
        match done {
            Ok((which, level, Ok(t))) => {
                debug!("own-limit sandbox={key}: {which:?} threshold armed at {level}");
                match which {
                    Which::Rise => self.rise = Some((level, t)),
                    Which::Fall => self.fall = Some((level, t)),
                }
            }
            Ok((which, level, Err(e))) => {
                debug!("own-limit sandbox={key}: {which:?} threshold at {level}: {e}; comparing on a timer");
                self.refused = true;
            }
            Err(e) => {
                warn!("own-limit sandbox={key}: threshold registration: {e}; comparing on a timer");
                self.refused = true;
            }
        }
    }
}

fn host_memory(memcg: &Memcg) -> std::io::Result<HostMemory> {
    // The usage first: the level is counted from it, so it must not
    // include growth the shmem figure (the slack) does not.
    let usage = threshold::usage(memcg)?;
    Ok(HostMemory {
        usage,
        shmem: threshold::shmem(memcg).ok().flatten(),
    })
}
