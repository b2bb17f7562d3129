//! Events to containerd, in order, over its ttrpc Events service.
//!
//! One queue and one sender task: an event is forwarded only after the one
//! before it was answered, so TaskOOM can never overtake or trail TaskExit,
//! and oomguard's own `/oomguard/oom` report of a kill, queued right after
//! its TaskOOM, can never trail the TaskExit either.
//! Nothing is given up while containerd is away (killed, restarting,
//! upgraded): the head of the queue is retried, backing off to one attempt a
//! second, until a containerd answers on the same ttrpc path, however long
//! that takes. `publish_acked` additionally lets the caller wait for
//! containerd's answer (the exit path holds Wait and TaskExit back until
//! TaskOOM is in).
//!
//! Memory while containerd is away: no RPC can add a container or an exec
//! then, so the per-process events (create, start, exec, exit, delete) are
//! bounded by the processes the shim already has. The one event with no
//! such bound is an OOM story, TaskOOM and its OOMKill report (with
//! `oom_group` off a container can be OOM-killed again and again). Past
//! `OOM_COALESCE_AT` queued events, a TaskOOM for a container whose newest
//! queued story is still undelivered is coalesced into that story's
//! TaskOOM, and its OOMKill folded into the story's OOMKill (counts added,
//! `episodes` says how many): CRI sets the same reason once or twice; only a
//! client counting oom events (docker events) sees fewer. Every container
//! keeps at least one TaskOOM per OOM story, and TaskExit is never dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc::{self, context, Code};
use log::{debug, error, info, warn};
use tokio::sync::{oneshot, watch, Notify};

use crate::proto::{self, OOMKill};

/// A containerd task event with its topic and type URL.
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    Oom(TaskOOM),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    /// oomguard's own report of an OOM kill, right after its TaskOOM.
    OomKill(OOMKill),
    /// oomguard's warning before a kill.
    Pressure(proto::MemoryPressure),
}

impl Event {
    fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => "/tasks/create",
            Event::Start(_) => "/tasks/start",
            Event::Exit(_) => "/tasks/exit",
            Event::Delete(_) => "/tasks/delete",
            Event::Oom(_) => "/tasks/oom",
            Event::ExecAdded(_) => "/tasks/exec-added",
            Event::ExecStarted(_) => "/tasks/exec-started",
            Event::Paused(_) => "/tasks/paused",
            Event::Resumed(_) => "/tasks/resumed",
            Event::OomKill(_) => proto::OOM_TOPIC,
            Event::Pressure(_) => proto::PRESSURE_TOPIC,
        }
    }

    /// The container the event is about.
    fn container_id(&self) -> &str {
        match self {
            Event::Create(e) => &e.container_id,
            Event::Start(e) => &e.container_id,
            Event::Exit(e) => &e.container_id,
            Event::Delete(e) => &e.container_id,
            Event::Oom(e) => &e.container_id,
            Event::ExecAdded(e) => &e.container_id,
            Event::ExecStarted(e) => &e.container_id,
            Event::Paused(e) => &e.container_id,
            Event::Resumed(e) => &e.container_id,
            Event::OomKill(e) => &e.container_id,
            Event::Pressure(e) => &e.container_id,
        }
    }

    fn to_any(&self) -> Any {
        let task = |name: &str| format!("containerd.events.{name}");
        let (type_url, bytes) = match self {
            Event::Create(e) => (task("TaskCreate"), e.write_to_bytes()),
            Event::Start(e) => (task("TaskStart"), e.write_to_bytes()),
            Event::Exit(e) => (task("TaskExit"), e.write_to_bytes()),
            Event::Delete(e) => (task("TaskDelete"), e.write_to_bytes()),
            Event::Oom(e) => (task("TaskOOM"), e.write_to_bytes()),
            Event::ExecAdded(e) => (task("TaskExecAdded"), e.write_to_bytes()),
            Event::ExecStarted(e) => (task("TaskExecStarted"), e.write_to_bytes()),
            Event::Paused(e) => (task("TaskPaused"), e.write_to_bytes()),
            Event::Resumed(e) => (task("TaskResumed"), e.write_to_bytes()),
            Event::OomKill(e) => (proto::OOM_KILL_TYPE_URL.to_string(), e.write_to_bytes()),
            Event::Pressure(e) => (
                proto::MEMORY_PRESSURE_TYPE_URL.to_string(),
                e.write_to_bytes(),
            ),
        };
        let mut any = Any::new();
        any.type_url = type_url;
        // Serialising a message built in memory cannot fail; an empty body
        // would still carry the topic.
        any.value = bytes.unwrap_or_default();
        any
    }
}

/// Queued events past which a repeated TaskOOM is coalesced (see the module
/// comment). An event takes a few hundred bytes, so this bounds the OOM part
/// of the queue to about 100 KiB.
pub const OOM_COALESCE_AT: usize = 256;

/// The longest pause between two attempts while containerd is away.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// One Forward call; a containerd that is up answers in milliseconds.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

struct Pending {
    seq: u64,
    event: Event,
    /// When it happened: containerd publishes the envelope with this time,
    /// also when it is replayed after an outage.
    at: Timestamp,
    acks: Vec<oneshot::Sender<bool>>,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Pending>,
    next_seq: u64,
    coalesced: u64,
}

impl Queue {
    /// Adds `event` (or folds a repeated OOM story into the queued one) and
    /// returns the sequence number whose delivery delivers it.
    fn push(&mut self, event: Event, ack: Option<oneshot::Sender<bool>>) -> u64 {
        if let Some(p) = self.coalescible(&event) {
            let seq = p.seq;
            p.acks.extend(ack);
            if let (Event::OomKill(queued), Event::OomKill(later)) = (&mut p.event, event) {
                proto::fold(queued, later);
                return seq;
            }
            let id = p.event.container_id().to_string();
            self.coalesced += 1;
            if self.coalesced.is_power_of_two() {
                warn!(
                    "events: containerd away, {} events queued: {} repeated TaskOOM coalesced (latest for id={})",
                    self.events.len(),
                    self.coalesced,
                    id
                );
            }
            return seq;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.events.push_back(Pending {
            seq,
            event,
            at: now(),
            acks: ack.into_iter().collect(),
        });
        seq
    }

    /// The queued, undelivered event of the same kind a new TaskOOM or
    /// OOMKill can be folded into: only past the bound, and only into the
    /// container's newest OOM story (its TaskOOM, and the OOMKill after it
    /// if queued) with nothing else of that container queued after it, so
    /// every consumer sees the same story in order. A TaskOOM that was
    /// folded leaves its OOMKill to fold into the story's OOMKill, which is
    /// then the container's newest event. The head is never chosen: it may
    /// be on the wire already.
    fn coalescible(&mut self, event: &Event) -> Option<&mut Pending> {
        let is_oom = matches!(event, Event::Oom(_));
        if !(is_oom || matches!(event, Event::OomKill(_))) || self.events.len() < OOM_COALESCE_AT {
            return None;
        }
        let id = event.container_id();
        let mut mine = self
            .events
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, p)| p.event.container_id() == id);
        let (last_at, last) = mine.next()?;
        let at = match (&last.event, is_oom) {
            (Event::Oom(_), true) | (Event::OomKill(_), false) => last_at,
            (Event::OomKill(_), true) => match mine.next() {
                Some((at, p)) if matches!(p.event, Event::Oom(_)) => at,
                _ => return None,
            },
            _ => return None,
        };
        if at == 0 {
            return None;
        }
        self.events.get_mut(at)
    }

    fn has_container(&self, id: &str) -> bool {
        self.events.iter().any(|p| p.event.container_id() == id)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    queued: Notify,
    /// The sequence number of the last event done with (delivered, or
    /// refused by containerd).
    done: watch::Sender<u64>,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

impl Publisher {
    pub fn new(ttrpc_address: String, namespace: String) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queued: Notify::new(),
            done: watch::channel(0).0,
        });
        tokio::spawn(sender(ttrpc_address, namespace, shared.clone()));
        Publisher { shared }
    }

    fn push(&self, event: Event, ack: Option<oneshot::Sender<bool>>) -> u64 {
        let seq = self.shared.queue().push(event, ack);
        self.shared.queued.notify_one();
        seq
    }

    /// Queues `event`; returns its place in the queue (for `delivered`).
    pub fn publish(&self, event: Event) -> u64 {
        self.push(event, None)
    }

    /// Resolves once the event `publish` numbered `seq`, and so every event
    /// queued before it, is done with (delivered, or refused by containerd).
    pub async fn delivered(&self, seq: u64) {
        let mut done = self.shared.done.subscribe();
        // The sender lives as long as the runtime.
        let _ = done.wait_for(|d| *d >= seq).await;
    }

    /// Queues `event` now (so the caller can act before awaiting) and
    /// resolves once containerd has answered: true when it took the event,
    /// false when it refused it.
    pub fn publish_acked(&self, event: Event) -> impl Future<Output = bool> {
        let (ack, answered) = oneshot::channel();
        self.push(event, Some(ack));
        async move { answered.await.unwrap_or(false) }
    }

    /// Whether an event of container `id` still waits for containerd.
    pub fn has_pending(&self, id: &str) -> bool {
        self.shared.queue().has_container(id)
    }

    /// Waits until everything queued so far (and whatever is queued
    /// meanwhile) is delivered, or `limit` has passed; returns how many
    /// events are left.
    pub async fn flush(&self, limit: Duration) -> usize {
        let mut done = self.shared.done.subscribe();
        let drained = async {
            loop {
                let last = self.shared.queue().next_seq;
                if *done.borrow_and_update() >= last {
                    return;
                }
                if done.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, drained).await;
        self.shared.queue().events.len()
    }
}

fn address_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("unix://{addr}")
    }
}

/// What one attempt at the head event came to.
enum Attempt {
    Delivered,
    /// containerd answered that it will never take this event.
    Refused(String),
    /// No containerd to answer (away, restarting, hung): try again.
    Failed(String),
}

async fn sender(address: String, namespace: String, shared: Arc<Shared>) {
    let uri = address_uri(&address);
    let mut client: Option<EventsClient> = None;
    let mut backoff = FIRST_BACKOFF;
    // Since when containerd has been unreachable, and how often it was tried.
    let mut away: Option<(tokio::time::Instant, u64)> = None;
    loop {
        let head = {
            let q = shared.queue();
            q.events.front().map(|p| (p.seq, request(&namespace, p)))
        };
        let Some((seq, (topic, req))) = head else {
            shared.queued.notified().await;
            continue;
        };
        let sent = std::time::Instant::now();
        let outcome = attempt(&uri, &mut client, &req).await;
        let delivered = match outcome {
            Attempt::Failed(why) => {
                let (since, tries) = away.get_or_insert((tokio::time::Instant::now(), 0));
                *tries += 1;
                // One line when containerd goes, then one per doubling of
                // attempts: an outage of hours stays a few dozen lines.
                if tries.is_power_of_two() {
                    warn!(
                        "events: containerd unreachable for {:?} ({tries} attempts, {} events queued, head topic={topic}): {why}",
                        since.elapsed(),
                        shared.queue().events.len()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Attempt::Delivered => true,
            Attempt::Refused(why) => {
                error!("events: containerd refused topic={topic}: {why}; dropped");
                false
            }
        };
        if let Some((since, tries)) = away.take() {
            info!(
                "events: containerd reachable again after {:?} ({tries} failed attempts); replaying {} queued events",
                since.elapsed(),
                shared.queue().events.len()
            );
        }
        backoff = FIRST_BACKOFF;
        let acks = {
            let mut q = shared.queue();
            match q.events.pop_front() {
                Some(p) if p.seq == seq => p.acks,
                Some(p) => {
                    // Only the sender pops; the head cannot change under it.
                    q.events.push_front(p);
                    Vec::new()
                }
                None => Vec::new(),
            }
        };
        debug!(
            "events: published topic={topic} seq={seq} forward_ms={:.3}",
            sent.elapsed().as_secs_f64() * 1000.0
        );
        for ack in acks {
            let _ = ack.send(delivered);
        }
        shared.done.send_replace(seq);
    }
}

fn request(namespace: &str, p: &Pending) -> (&'static str, ForwardRequest) {
    let topic = p.event.topic();
    let mut env = Envelope::new();
    env.timestamp = MessageField::some(p.at.clone());
    env.namespace = namespace.to_string();
    env.topic = topic.to_string();
    env.event = MessageField::some(p.event.to_any());
    let mut req = ForwardRequest::new();
    req.envelope = MessageField::some(env);
    (topic, req)
}

async fn attempt(uri: &str, client: &mut Option<EventsClient>, req: &ForwardRequest) -> Attempt {
    if client.is_none() {
        match Client::connect(uri).await {
            Ok(c) => *client = Some(EventsClient::new(c)),
            Err(e) => return Attempt::Failed(format!("connect {uri}: {e}")),
        }
    }
    let Some(c) = client.as_ref() else {
        return Attempt::Failed("no client".into());
    };
    let timeout = context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
    match c.forward(timeout, req).await {
        Ok(_) => Attempt::Delivered,
        // The envelope itself is bad: sending it again cannot help, and
        // holding it would stop every event behind it.
        Err(ttrpc::Error::RpcStatus(s)) if s.code() == Code::INVALID_ARGUMENT => {
            Attempt::Refused(s.message().to_string())
        }
        Err(e) => {
            // A new connection next time: this one may be to a containerd
            // that is gone.
            *client = None;
            Attempt::Failed(format!("forward: {e}"))
        }
    }
}

pub fn now() -> Timestamp {
    timestamp(std::time::SystemTime::now())
}

pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::shim_async::{create_events, Events};
    use containerd_shim_protos::ttrpc::r#async::{Server, TtrpcContext};
    use containerd_shim_protos::types::empty::Empty;

    fn oom(id: &str) -> Event {
        let mut e = TaskOOM::new();
        e.container_id = id.into();
        Event::Oom(e)
    }

    fn exit(id: &str, status: u32) -> Event {
        let mut e = TaskExit::new();
        e.container_id = id.into();
        e.id = id.into();
        e.exit_status = status;
        Event::Exit(e)
    }

    /// A containerd stand-in for the wire: a real ttrpc Events server on a
    /// unix socket that records what it was forwarded, in order.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(String, String, String)>>,
        refuse_topic: Option<&'static str>,
    }

    #[async_trait::async_trait]
    impl Events for Recorder {
        async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            let env = req.envelope.unwrap_or_default();
            if Some(env.topic.as_str()) == self.refuse_topic {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    Code::INVALID_ARGUMENT,
                    "bad envelope",
                )));
            }
            let any = env.event.unwrap_or_default();
            let id = match env.topic.as_str() {
                "/tasks/oom" => TaskOOM::parse_from_bytes(&any.value).unwrap().container_id,
                "/tasks/exit" => {
                    let e = TaskExit::parse_from_bytes(&any.value).unwrap();
                    format!("{}:{}", e.container_id, e.exit_status)
                }
                _ => String::new(),
            };
            self.seen
                .lock()
                .unwrap()
                .push((env.namespace, env.topic, id));
            Ok(Empty::new())
        }
    }

    fn socket_path(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "oomguard-events-{name}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    async fn serve(path: &std::path::Path, recorder: Arc<Recorder>) -> Server {
        let mut server = Server::new()
            .bind(&format!("unix://{}", path.display()))
            .unwrap()
            .register_service(create_events(recorder));
        server.start().await.unwrap();
        server
    }

    fn topics(r: &Recorder) -> Vec<(String, String)> {
        r.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t, id)| (t.clone(), id.clone()))
            .collect()
    }

    #[test]
    fn repeated_oom_is_coalesced_only_past_the_bound() {
        let mut q = Queue::default();
        // Below the bound every TaskOOM is kept.
        q.push(oom("a"), None);
        q.push(oom("a"), None);
        assert_eq!(q.events.len(), 2);
        for i in 0..OOM_COALESCE_AT {
            q.push(exit(&format!("filler{i}"), 0), None);
        }
        let len = q.events.len();
        // "a"'s newest queued event is a TaskOOM, but other containers'
        // events came after it: still coalescible (only a's story counts).
        q.push(oom("a"), None);
        assert_eq!(q.events.len(), len);
        assert_eq!(q.coalesced, 1);
        // A container with no queued TaskOOM gets its own.
        q.push(oom("b"), None);
        assert_eq!(q.events.len(), len + 1);
        // Once a's exit is queued, a new TaskOOM of a is a new event.
        q.push(exit("a", 137), None);
        q.push(oom("a"), None);
        assert_eq!(q.events.len(), len + 3);
        // TaskExit is never coalesced.
        q.push(exit("a", 137), None);
        assert_eq!(q.events.len(), len + 4);
    }

    fn oom_kill(id: &str, killed: u32) -> Event {
        Event::OomKill(OOMKill {
            container_id: id.into(),
            victim_pid: Some(killed as i32),
            processes_killed: Some(killed),
            memcg_peak_bytes: Some(u64::from(killed) << 20),
            episodes: 1,
            ..Default::default()
        })
    }

    fn kinds(q: &Queue, id: &str) -> Vec<&'static str> {
        q.events
            .iter()
            .filter(|p| p.event.container_id() == id)
            .map(|p| p.event.topic())
            .collect()
    }

    #[test]
    fn oom_stories_are_folded_whole_past_the_bound() {
        let mut q = Queue::default();
        q.push(exit("head", 0), None);
        // Below the bound every story is kept, report after its TaskOOM.
        q.push(oom("a"), None);
        q.push(oom_kill("a", 1), None);
        assert_eq!(kinds(&q, "a"), ["/tasks/oom", "/oomguard/oom"]);
        for i in 0..OOM_COALESCE_AT {
            q.push(exit(&format!("filler{i}"), 0), None);
        }
        let len = q.events.len();
        // Two more stories of a: folded into the queued one.
        for killed in [2, 3] {
            q.push(oom("a"), None);
            q.push(oom_kill("a", killed), None);
        }
        assert_eq!(q.events.len(), len);
        assert_eq!(kinds(&q, "a"), ["/tasks/oom", "/oomguard/oom"]);
        let folded = q
            .events
            .iter()
            .find_map(|p| match &p.event {
                Event::OomKill(k) if k.container_id == "a" => Some(k.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(folded.episodes, 3);
        assert_eq!(folded.processes_killed, Some(6));
        assert_eq!(folded.victim_pid, Some(3), "the latest victim");
        assert_eq!(folded.memcg_peak_bytes, Some(3 << 20), "the highest peak");
        // After a's exit a new story is queued whole, in order.
        q.push(exit("a", 137), None);
        q.push(oom("a"), None);
        q.push(oom_kill("a", 1), None);
        assert_eq!(
            kinds(&q, "a"),
            [
                "/tasks/oom",
                "/oomguard/oom",
                "/tasks/exit",
                "/tasks/oom",
                "/oomguard/oom"
            ]
        );
        // A report is never folded into another container's.
        q.push(oom("b"), None);
        q.push(oom_kill("b", 1), None);
        assert_eq!(kinds(&q, "b"), ["/tasks/oom", "/oomguard/oom"]);
    }

    #[test]
    fn oom_kill_goes_out_as_its_own_type() {
        let any = oom_kill("a", 1).to_any();
        assert_eq!(any.type_url, "oomguard.events.v1.OOMKill");
        let back = OOMKill::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.container_id, "a");
        assert_eq!(oom_kill("a", 1).topic(), "/oomguard/oom");
    }

    #[test]
    fn the_head_is_never_coalesced_into() {
        let mut q = Queue::default();
        q.push(oom("a"), None);
        for i in 0..OOM_COALESCE_AT {
            q.push(oom(&format!("other{i}")), None);
        }
        let len = q.events.len();
        q.push(oom("a"), None);
        assert_eq!(q.events.len(), len + 1, "a's only TaskOOM is the head");
    }

    #[tokio::test]
    async fn replays_in_order_once_containerd_is_back() {
        let path = socket_path("replay");
        let publisher = Publisher::new(path.display().to_string(), "ns1".into());
        for i in 0..5 {
            publisher.publish(oom(&format!("c{i}")));
            publisher.publish(exit(&format!("c{i}"), 137));
        }
        let acked = publisher.publish_acked(oom("late"));
        // Nobody listens for a while: nothing is lost, flush reports it.
        assert_eq!(publisher.flush(Duration::from_millis(1500)).await, 11);
        assert!(publisher.has_pending("c3"));
        let recorder = Arc::new(Recorder::default());
        let mut server = serve(&path, recorder.clone()).await;
        assert!(tokio::time::timeout(Duration::from_secs(5), acked)
            .await
            .unwrap());
        assert_eq!(publisher.flush(Duration::from_secs(5)).await, 0);
        assert!(!publisher.has_pending("c3"));
        let mut want = Vec::new();
        for i in 0..5 {
            want.push(("/tasks/oom".to_string(), format!("c{i}")));
            want.push(("/tasks/exit".to_string(), format!("c{i}:137")));
        }
        want.push(("/tasks/oom".to_string(), "late".to_string()));
        assert_eq!(topics(&recorder), want);
        assert!(recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|(ns, _, _)| ns == "ns1"));

        // containerd goes (its socket with it) and comes back: the sender
        // reconnects on the same path.
        server.shutdown().await.unwrap();
        drop(server);
        let _ = std::fs::remove_file(&path);
        publisher.publish(exit("again", 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let recorder2 = Arc::new(Recorder::default());
        let mut server = serve(&path, recorder2.clone()).await;
        assert_eq!(publisher.flush(Duration::from_secs(5)).await, 0);
        assert_eq!(
            topics(&recorder2),
            [("/tasks/exit".to_string(), "again:1".to_string())]
        );
        server.shutdown().await.unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_refused_event_does_not_block_the_queue() {
        let path = socket_path("refuse");
        let recorder = Arc::new(Recorder {
            refuse_topic: Some("/tasks/oom"),
            ..Default::default()
        });
        let mut server = serve(&path, recorder.clone()).await;
        let publisher = Publisher::new(path.display().to_string(), "ns1".into());
        let acked = publisher.publish_acked(oom("a"));
        publisher.publish(exit("a", 137));
        assert!(!acked.await, "a refused event is not acknowledged");
        assert_eq!(publisher.flush(Duration::from_secs(5)).await, 0);
        assert_eq!(
            topics(&recorder),
            [("/tasks/exit".to_string(), "a:137".to_string())]
        );
        server.shutdown().await.unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
