//! The warning before the kill: when a container's working set (usage less
//! inactive page cache, as the kubelet counts it) reaches a share of its
//! memory limit (`memory_warning`, default 90 %), the shim says so once per
//! episode: a log line, and with `oom_report = "stderr"` a line in the
//! container's stderr. Event-driven: cgroup v1 usage thresholds
//! (`cgroup.event_control`) at the level, then at the re-arm mark, plus the
//! memcg's own `medium` memory-pressure event to look again when page cache
//! held the usage over the level; an idle container costs nothing.
//!
//! cgroup v2 has no usage threshold: there the warning is memory pressure,
//! a PSI trigger on the memcg's `memory.pressure` (`memory_warning_stall`,
//! default 10 % of each 2 s window stalled) and `memory.events`' `high`
//! counter; an episode ends after [`QUIET`] without either. gVisor
//! containers: each reading of their sandbox's watch feeds the episode
//! (`oom::own_limit`).

pub mod level;
mod psi;

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};
use tokio::task::JoinHandle;

use containerd_shim_protos::protobuf::MessageField;

use crate::events::{timestamp, Event, Publisher};
use crate::oom::memcg::{key_values, Memcg};
use crate::oom::pressure::PressureLevel;
use crate::oom::threshold::{self, Threshold};
use crate::proto::{MemoryPressure, Trigger};
pub use level::Level;

/// Where a container's warning goes: the shim's log, the container's
/// stderr (with `oom_report = "stderr"`). One per container, shared by the
/// watch that reads its memory (the v1 watch here, or its gVisor sandbox's).
pub struct Sink {
    id: String,
    pub share: f64,
    /// v2: the PSI stall share that warns (`None`: off).
    pub stall: Option<f64>,
    /// Taken at the init's exit, so the log's reader sees its end at once
    /// (an aborted task drops its future later).
    stderr: Mutex<Option<File>>,
    /// The typed event (`/oomguard/memory-pressure`) and the pod it names.
    publisher: Publisher,
    sandbox_id: Option<String>,
}

impl Sink {
    /// `None` when the level is off.
    pub fn new(
        id: &str,
        level: Level,
        stall: Level,
        stderr: Option<File>,
        (publisher, sandbox_id): (Publisher, Option<String>),
    ) -> Option<Arc<Sink>> {
        let Level::Share(share) = level else {
            info!("warning id={id}: memory warning off");
            return None;
        };
        Some(Arc::new(Sink {
            id: id.to_string(),
            share,
            stall: match stall {
                Level::Share(s) => Some(s),
                Level::Off => None,
            },
            stderr: Mutex::new(stderr),
            publisher,
            sandbox_id,
        }))
    }

    /// An episode began: `working_set` of `limit`, as `seen` says.
    pub fn warned(&self, working_set: u64, limit: u64, trigger: Trigger, seen: &str) {
        self.publish(trigger, Some(working_set), Some(limit), self.share);
        let line = format!(
            "oomguard: memory warning: working set {} of the {} limit ({}%), over the {}% warning level: an OOM kill follows if it keeps growing",
            mib(working_set),
            mib(limit),
            (working_set as f64 * 100.0 / limit as f64).round(),
            (self.share * 100.0).round()
        );
        self.say(
            &line,
            &format!(
                "working_set={working_set} limit={limit} level={} seen={seen}",
                self.share
            ),
        );
    }

    /// v2: an episode of memory pressure began (`why`: PSI or memory.high).
    pub fn pressured(
        &self,
        working_set: Option<u64>,
        limit: Option<u64>,
        trigger: Trigger,
        why: &str,
    ) {
        self.publish(trigger, working_set, limit, self.stall.unwrap_or(0.0));
        let at = match (working_set, limit) {
            (Some(w), Some(l)) => format!(
                " at working set {} of the {} limit ({}%)",
                mib(w),
                mib(l),
                (w as f64 * 100.0 / l as f64).round()
            ),
            (Some(w), None) => format!(" at working set {}", mib(w)),
            _ => String::new(),
        };
        let line = format!(
            "oomguard: memory warning: {why}{at}: reclaim is slowing it down, an OOM kill follows if it keeps growing"
        );
        self.say(
            &line,
            &format!("working_set={working_set:?} limit={limit:?} seen={why:?}"),
        );
    }

    /// The typed warning, through the shim's ordered queue (replayed after
    /// a containerd outage like the task events).
    fn publish(&self, trigger: Trigger, working_set: Option<u64>, limit: Option<u64>, level: f64) {
        let e = MemoryPressure {
            container_id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone().unwrap_or_default(),
            timestamp: MessageField::some(timestamp(std::time::SystemTime::now())),
            trigger: trigger.into(),
            working_set_bytes: working_set,
            limit_bytes: limit,
            level_percent: (level * 100.0).round() as u32,
            ..Default::default()
        };
        self.publisher.publish(Event::Pressure(e));
    }

    fn say(&self, line: &str, fields: &str) {
        let id = &self.id;
        warn!("warning id={id}: {fields} => warned");
        let line = line.to_string();
        // On a blocking thread: the container's stderr is a blocking pipe
        // its reader may be slow to drain.
        let copy = self
            .stderr
            .lock()
            .ok()
            .and_then(|s| s.as_ref().and_then(|f| f.try_clone().ok()));
        if let Some(mut f) = copy {
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                    warn!("warning id={id}: container stderr: {e}");
                }
            });
        }
    }

    /// At the init's exit: no more lines.
    pub fn close(&self) {
        if let Ok(mut s) = self.stderr.lock() {
            s.take();
        }
    }
}

/// A running v1 warning watch; ends when dropped (at the init's exit).
pub struct MemoryWarning(JoinHandle<()>);

impl Drop for MemoryWarning {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The memcg's working set: usage less `total_inactive_file`.
fn working_set(memcg: &Memcg) -> std::io::Result<u64> {
    let usage = threshold::usage(memcg)?;
    let stat = std::fs::read_to_string(memcg.path().join("memory.stat"))?;
    let inactive = key_values(&stat)
        .ok()
        .and_then(|kv| {
            kv.iter()
                .find(|(k, _)| *k == "total_inactive_file" || *k == "inactive_file")
                .map(|(_, v)| *v)
        })
        .unwrap_or(0);
    Ok(usage.saturating_sub(inactive))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// An episode of pressure (v2) ends after this long without a trigger.
pub const QUIET: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the watch of a container's own memcg (`None` where there is
/// nothing to watch: v1 without a limit, v2 with the stall level off).
pub fn start(sink: Arc<Sink>, memcg: &Memcg) -> Option<MemoryWarning> {
    let id = sink.id.clone();
    if let Memcg::V2(dir) = memcg {
        let Some(stall) = sink.stall else {
            debug!("warning id={id}: cgroup v2, stall level off: no warning");
            return None;
        };
        let psi = match psi::PsiTrigger::register(&dir.join("memory.pressure"), stall) {
            Ok(t) => t,
            Err(e) => {
                warn!("warning id={id}: no PSI trigger ({e}): no memory warning");
                return None;
            }
        };
        info!(
            "warning id={id}: cgroup v2: PSI trigger {:?} and memory.events high warn once per episode",
            psi::trigger(stall)
        );
        let memcg = memcg.clone();
        return Some(MemoryWarning(tokio::spawn(async move {
            if let Err(e) = watch_v2(&sink, &memcg, psi).await {
                debug!("warning id={id}: watch ended: {e}");
            }
        })));
    }
    let Some(limit) = crate::oom::figures::MemoryFigures::read(memcg).limit else {
        debug!("warning id={id}: no memory limit: no warning");
        return None;
    };
    let memcg = memcg.clone();
    info!(
        "warning id={id}: working set over {} ({}% of the {} limit) warns once per episode",
        mib((limit as f64 * sink.share) as u64),
        (sink.share * 100.0).round(),
        mib(limit)
    );
    Some(MemoryWarning(tokio::spawn(async move {
        if let Err(e) = watch(&sink, &memcg, limit).await {
            debug!("warning id={id}: watch ended: {e}");
        }
    })))
}

async fn watch(sink: &Sink, memcg: &Memcg, limit: u64) -> std::io::Result<()> {
    let id = &sink.id;
    let mut episode = level::Episode::new(limit, sink.share);
    // Reclaim at the container's own limit: the usage sits over the level
    // with page cache, and the working set may have grown under it.
    let pressure = PressureLevel::register(memcg.path(), "medium,local").ok();
    let mut armed: Option<(u64, Threshold)> = None;
    loop {
        // A registration costs an RCU grace period: only when the mark moves
        // or the last one fired.
        let mark = episode.next_crossing();
        let crossing = match armed.take() {
            Some((at, t)) if at == mark => t,
            _ => Threshold::arm_off_runtime(memcg, mark).await?,
        };
        // Read after arming: a climb between the two is not missed.
        let ws = working_set(memcg)?;
        if episode.observe(ws) {
            sink.warned(
                ws,
                limit,
                Trigger::TRIGGER_USAGE_LEVEL,
                "memcg usage threshold",
            );
            continue;
        }
        debug!("warning id={id}: working_set={ws} next_crossing={mark} => waiting");
        let fired = match &pressure {
            Some(p) => tokio::select! {
                r = crossing.crossed() => { r?; true }
                r = p.next() => { r?; false }
            },
            None => {
                crossing.crossed().await?;
                true
            }
        };
        if !fired {
            armed = Some((mark, crossing));
        }
    }
}

fn high_count(memcg: &Memcg) -> Option<u64> {
    let text = std::fs::read_to_string(memcg.path().join("memory.events")).ok()?;
    crate::oom::memcg::parse_memory_events(&text)
        .ok()
        .map(|e| e.high)
}

async fn watch_v2(sink: &Sink, memcg: &Memcg, psi: psi::PsiTrigger) -> std::io::Result<()> {
    let events = crate::oom::notify::Notifier::new(memcg)?;
    let mut high = high_count(memcg);
    let mut episode_until: Option<tokio::time::Instant> = None;
    loop {
        let quiet = async {
            match episode_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let (trigger, why) = tokio::select! {
            r = psi.next() => {
                r?;
                (Trigger::TRIGGER_PRESSURE_STALL, format!(
                    "memory pressure stalled its tasks for over {}% of {} s",
                    (sink.stall.unwrap_or(0.0) * 100.0).round(),
                    psi::WINDOW_US / 1_000_000
                ))
            }
            r = events.next() => {
                r?;
                let now = high_count(memcg);
                if now <= high {
                    continue;
                }
                high = now;
                (
                    Trigger::TRIGGER_MEMORY_HIGH,
                    "it reached memory.high (the kernel throttles it there)".to_string(),
                )
            }
            _ = quiet => {
                debug!("warning id={}: no pressure for {QUIET:?} => episode over", sink.id);
                episode_until = None;
                continue;
            }
        };
        if episode_until.is_none() {
            let figures = crate::oom::figures::MemoryFigures::read(memcg);
            let ws = working_set(memcg).ok();
            sink.pressured(ws, figures.limit, trigger, &why);
        }
        episode_until = Some(tokio::time::Instant::now() + QUIET);
    }
}
