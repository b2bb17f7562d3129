//! Events to containerd, in order, over its ttrpc Events service.
//!
//! One queue and one sender task: an event is forwarded only after the one
//! before it was answered, so TaskOOM can never overtake or trail TaskExit.
//! `publish_acked` additionally lets the caller wait for containerd's answer
//! (the exit path holds Wait and TaskExit back until TaskOOM is in).

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
use containerd_shim_protos::ttrpc::context;
use log::{debug, error, warn};
use tokio::sync::{mpsc, oneshot};

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
        }
    }

    fn to_any(&self) -> Any {
        let (name, bytes) = match self {
            Event::Create(e) => ("TaskCreate", e.write_to_bytes()),
            Event::Start(e) => ("TaskStart", e.write_to_bytes()),
            Event::Exit(e) => ("TaskExit", e.write_to_bytes()),
            Event::Delete(e) => ("TaskDelete", e.write_to_bytes()),
            Event::Oom(e) => ("TaskOOM", e.write_to_bytes()),
            Event::ExecAdded(e) => ("TaskExecAdded", e.write_to_bytes()),
            Event::ExecStarted(e) => ("TaskExecStarted", e.write_to_bytes()),
            Event::Paused(e) => ("TaskPaused", e.write_to_bytes()),
            Event::Resumed(e) => ("TaskResumed", e.write_to_bytes()),
        };
        let mut any = Any::new();
        any.type_url = format!("containerd.events.{name}");
        // Serialising a message built in memory cannot fail; an empty body
        // would still carry the topic.
        any.value = bytes.unwrap_or_default();
        any
    }
}

struct Queued {
    event: Event,
    ack: Option<oneshot::Sender<bool>>,
}

#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Queued>,
}

/// How long one event is retried while containerd is away.
const RETRY_FOR: Duration = Duration::from_secs(30);

impl Publisher {
    pub fn new(ttrpc_address: String, namespace: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(sender(ttrpc_address, namespace, rx));
        Publisher { tx }
    }

    pub fn publish(&self, event: Event) {
        if self.tx.send(Queued { event, ack: None }).is_err() {
            error!("events: sender stopped; event dropped");
        }
    }

    /// Publishes and waits until containerd has answered (true) or the
    /// event was given up (false).
    pub async fn publish_acked(&self, event: Event) -> bool {
        let (ack, answered) = oneshot::channel();
        if self
            .tx
            .send(Queued {
                event,
                ack: Some(ack),
            })
            .is_err()
        {
            return false;
        }
        answered.await.unwrap_or(false)
    }
}

fn address_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("unix://{addr}")
    }
}

async fn sender(address: String, namespace: String, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let uri = address_uri(&address);
    let mut client: Option<EventsClient> = None;
    while let Some(item) = rx.recv().await {
        let topic = item.event.topic();
        let mut req = ForwardRequest::new();
        let mut env = Envelope::new();
        env.timestamp = MessageField::some(now());
        env.namespace = namespace.clone();
        env.topic = topic.to_string();
        env.event = MessageField::some(item.event.to_any());
        req.envelope = MessageField::some(env);

        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        let delivered = loop {
            if client.is_none() {
                match Client::connect(&uri).await {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => warn!("events: connect {address}: {e}"),
                }
            }
            if let Some(c) = &client {
                match c.forward(context::with_timeout(5_000_000_000), &req).await {
                    Ok(_) => break true,
                    Err(e) => {
                        warn!("events: forward {topic}: {e}");
                        client = None;
                    }
                }
            }
            if started.elapsed() >= RETRY_FOR {
                break false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
        if delivered {
            debug!("events: published topic={topic}");
        } else {
            error!("events: gave up on topic={topic} after {RETRY_FOR:?}");
        }
        if let Some(ack) = item.ack {
            let _ = ack.send(delivered);
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
