//! The shim's side of a sandbox's monitoring stream: listen before `runsc
//! create` (it blocks until the handshake is answered), record what the
//! sentry reports per container, and note how the stream ended.
//!
//! Every connection to the socket is read as untrusted input: a malformed
//! packet is logged and dropped, the stream goes on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use log::{debug, info, warn};

use super::listener::{TraceListener, TraceStream};
use super::trace::{pod_init_config, Event};

/// What the sentry said about one sandbox.
#[derive(Debug, Default, Clone)]
pub struct StreamEvidence {
    /// Containers the sentry reported as started.
    pub started: Vec<String>,
    /// Process exits inside the sandbox: (container id, thread group id,
    /// raw wait status), from exit-notify-parent points.
    pub exits: Vec<(String, i32, i32)>,
    /// The sandbox's connection ended (EOF or error).
    pub ended: bool,
    pub malformed: u64,
    pub dropped: u32,
}

impl StreamEvidence {
    /// One line for the verdict log.
    pub fn summary(&self, container: &str) -> String {
        let exits: Vec<String> = self
            .exits
            .iter()
            .filter(|(c, _, _)| c == container)
            .map(|(_, tgid, ws)| format!("{tgid}:{ws}"))
            .collect();
        format!(
            "gvisor_stream(started={} exits=[{}] ended={} malformed={} dropped={})",
            self.started.iter().any(|c| c == container),
            exits.join(","),
            self.ended,
            self.malformed,
            self.dropped
        )
    }
}

type Shared = Arc<Mutex<StreamEvidence>>;

/// Evidence per sandbox id, shared by the sandbox's containers.
fn registry() -> &'static Mutex<HashMap<String, Shared>> {
    static R: OnceLock<Mutex<HashMap<String, Shared>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

pub fn evidence(sandbox: &str) -> Option<StreamEvidence> {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.get(sandbox)
        .map(|e| e.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

pub fn forget(sandbox: &str) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(sandbox);
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Binds the monitoring socket for a new sandbox, writes the pod init
/// config runsc is given, and serves connections. Returns the config path.
pub fn listen(sandbox: &str, config_dir: &std::path::Path) -> std::io::Result<PathBuf> {
    // Socket paths are limited to 107 bytes; bundles are often deeper.
    let path = std::env::temp_dir().join(format!(
        "oomguard-trace-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let listener = TraceListener::bind(&path)?;
    let endpoint = listener.path_str()?.to_string();
    let config = config_dir.join("gvisor-pod-init.json");
    // ignore_setup_error: a sink that cannot be set up must not stop the
    // container; the verdict then stands on the host signals alone.
    let body = pod_init_config(&endpoint, 3, true);
    std::fs::write(&config, body.to_string())?;
    let shared: Shared = Arc::default();
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(sandbox.to_string(), shared.clone());
    info!("gvisor sandbox={sandbox}: trace listening at {endpoint}");
    let sandbox = sandbox.to_string();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut stream = match listener.accept_handshaken().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("gvisor sandbox={sandbox}: trace connection refused: {e}");
                    continue;
                }
            };
            let is_sandbox = first;
            first = false;
            let shared = shared.clone();
            let sandbox = sandbox.clone();
            tokio::spawn(
                async move { read_stream(&sandbox, &mut stream, &shared, is_sandbox).await },
            );
        }
    });
    Ok(config)
}

async fn read_stream(sandbox: &str, stream: &mut TraceStream, shared: &Shared, is_sandbox: bool) {
    loop {
        match stream.recv().await {
            Ok(Some(msg)) => {
                let mut ev = shared.lock().unwrap_or_else(|p| p.into_inner());
                ev.dropped = ev.dropped.max(msg.dropped_count());
                let container = msg.event.container_id().unwrap_or("").to_string();
                match &msg.event {
                    Event::ContainerStart(_) => {
                        debug!("gvisor sandbox={sandbox}: container_start container={container}");
                        ev.started.push(container);
                    }
                    Event::ExitNotifyParent(_) => {
                        let tgid = msg.event.context().map(|c| c.thread_group_id).unwrap_or(0);
                        let status = msg.event.exit_status().map(|s| s.0).unwrap_or(0);
                        debug!("gvisor sandbox={sandbox}: exit container={container} tgid={tgid} wait_status={status}");
                        ev.exits.push((container, tgid, status));
                    }
                    other => debug!("gvisor sandbox={sandbox}: point {other:?}"),
                }
            }
            Ok(None) => {
                info!("gvisor sandbox={sandbox}: trace stream ended (EOF)");
                break;
            }
            Err(e) if !e.is_fatal() => {
                warn!("gvisor sandbox={sandbox}: malformed trace packet dropped: {e}");
                shared.lock().unwrap_or_else(|p| p.into_inner()).malformed += 1;
            }
            Err(e) => {
                warn!("gvisor sandbox={sandbox}: trace stream failed: {e}");
                break;
            }
        }
    }
    if is_sandbox {
        shared.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
    }
}
