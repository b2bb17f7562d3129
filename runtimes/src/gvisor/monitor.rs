//! The shim's side of a sandbox's monitoring stream: listen before `runsc
//! create` (it blocks until the handshake is answered), record what the
//! sentry reports per container, and note how the stream ended.
//!
//! The socket is in a private directory of the sandbox's bundle
//! ([`socket_dir`](super::socket_dir)); a connection is admitted only from a
//! descendant of the shim running as its user ([`peer`](super::peer)), and
//! what an admitted peer sends is still untrusted input: a malformed packet
//! is logged and dropped, the stream goes on. The directory goes when the
//! sandbox is deleted ([`close`]), when the shim exits ([`close_all`]), or,
//! after a crash, with `delete` ([`remove_leftovers`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use log::{debug, info, warn};
use tokio::task::AbortHandle;

use super::listener::{TraceListener, TraceStream};
use super::peer;
use super::socket_dir::{self, SocketDir};
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
    /// Connections refused (not from a descendant of the shim, or not as
    /// its user).
    pub refused: u64,
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
            "gvisor_stream(started={} exits=[{}] ended={} malformed={} dropped={} refused={})",
            self.started.iter().any(|c| c == container),
            exits.join(","),
            self.ended,
            self.malformed,
            self.dropped,
            self.refused
        )
    }
}

type Shared = Arc<Mutex<StreamEvidence>>;
type Tasks = Arc<Mutex<Vec<AbortHandle>>>;

/// One sandbox's listener: its evidence, its directory and its tasks.
struct Monitor {
    evidence: Shared,
    dir: SocketDir,
    tasks: Tasks,
}

fn registry() -> &'static Mutex<HashMap<String, Monitor>> {
    static R: OnceLock<Mutex<HashMap<String, Monitor>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn evidence(sandbox: &str) -> Option<StreamEvidence> {
    lock(registry())
        .get(sandbox)
        .map(|m| lock(&m.evidence).clone())
}

/// Stops listening for `sandbox` and removes its socket directory.
pub fn close(sandbox: &str) {
    let Some(m) = lock(registry()).remove(sandbox) else {
        return;
    };
    shut(sandbox, m);
}

/// Closes every sandbox's listener (the shim is exiting).
pub fn close_all() {
    let all: Vec<(String, Monitor)> = lock(registry()).drain().collect();
    for (sandbox, m) in all {
        shut(&sandbox, m);
    }
}

fn shut(sandbox: &str, m: Monitor) {
    for task in lock(&m.tasks).drain(..) {
        task.abort();
    }
    let path = m.dir.path().to_path_buf();
    match m.dir.remove() {
        Ok(()) => info!(
            "gvisor sandbox={sandbox}: trace socket directory {} removed",
            path.display()
        ),
        Err(e) => warn!(
            "gvisor sandbox={sandbox}: cannot remove {}: {e}",
            path.display()
        ),
    }
}

/// `delete` after a dead shim: the socket directory it left in `bundle`.
pub fn remove_leftovers(bundle: &Path) -> std::io::Result<()> {
    socket_dir::remove(bundle)
}

/// Binds the monitoring socket for a new sandbox in a private directory of
/// `bundle`, writes the pod init config runsc is given, and serves
/// connections. Returns the config path.
pub fn listen(sandbox: &str, bundle: &Path) -> std::io::Result<PathBuf> {
    let dir = SocketDir::create(bundle)?;
    let endpoint = dir.endpoint();
    let setup = || -> std::io::Result<(TraceListener, PathBuf)> {
        let listener = TraceListener::bind(&endpoint)?;
        let config = dir.config_path();
        // ignore_setup_error: a sink that cannot be set up must not stop the
        // container; the verdict then stands on the host signals alone.
        let body = pod_init_config(listener.path_str()?, 3, true);
        std::fs::write(&config, body.to_string())?;
        Ok((listener, config))
    };
    let (listener, config) = match setup() {
        Ok(ok) => ok,
        Err(e) => {
            let _ = dir.remove();
            return Err(e);
        }
    };
    info!(
        "gvisor sandbox={sandbox}: trace listening at {} (endpoint {}, directory mode {:o})",
        dir.socket_path().display(),
        endpoint.display(),
        socket_dir::mode(dir.path()).unwrap_or(0)
    );
    let evidence: Shared = Arc::default();
    let tasks: Tasks = Arc::default();
    let accept = tokio::spawn(accept_loop(
        sandbox.to_string(),
        listener,
        evidence.clone(),
        tasks.clone(),
    ));
    lock(&tasks).push(accept.abort_handle());
    let old = lock(registry()).insert(
        sandbox.to_string(),
        Monitor {
            evidence,
            dir,
            tasks,
        },
    );
    if let Some(old) = old {
        // Not expected: one sandbox is created once per shim.
        for task in lock(&old.tasks).drain(..) {
            task.abort();
        }
    }
    Ok(config)
}

async fn accept_loop(sandbox: String, listener: TraceListener, evidence: Shared, tasks: Tasks) {
    let shim = std::process::id() as i32;
    let uid = nix::unistd::geteuid().as_raw();
    let mut first = true;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: do not spin on a listener that stays
                // readable.
                warn!("gvisor sandbox={sandbox}: trace accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = stream
            .peer_credentials()
            .map_err(|e| format!("no peer credentials: {e}"))
            .and_then(|c| {
                peer::admit(&c, shim, uid)
                    .map(|()| c)
                    .map_err(|why| format!("pid={} uid={}: {why}", c.pid, c.uid))
            });
        let creds = match admitted {
            Ok(c) => c,
            Err(why) => {
                warn!("gvisor sandbox={sandbox}: trace connection refused: {why}");
                lock(&evidence).refused += 1;
                continue;
            }
        };
        // The sandbox's own connection is the first admitted one (runsc
        // create connects once per sandbox; joining containers do not).
        let is_sandbox = first;
        first = false;
        info!(
            "gvisor sandbox={sandbox}: trace connection admitted from pid={} (sandbox stream: {is_sandbox})",
            creds.pid
        );
        let (sandbox, evidence) = (sandbox.clone(), evidence.clone());
        let task = tokio::spawn(async move {
            let mut stream = stream;
            read_stream(&sandbox, &mut stream, &evidence, is_sandbox).await
        });
        let mut tasks = lock(&tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

async fn read_stream(sandbox: &str, stream: &mut TraceStream, shared: &Shared, is_sandbox: bool) {
    loop {
        match stream.recv().await {
            Ok(Some(msg)) => {
                let mut ev = lock(shared);
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
                lock(shared).malformed += 1;
            }
            Err(e) => {
                warn!("gvisor sandbox={sandbox}: trace stream failed: {e}");
                break;
            }
        }
    }
    if is_sandbox {
        lock(shared).ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gvisor::trace::tests::hex;
    use std::os::unix::fs::PermissionsExt;

    /// Connects to `path`, sends the handshake, reads the answer, then sends
    /// `packets`; returns how many answer bytes came back (0: refused).
    /// Only raw syscalls: it also runs in a forked child.
    fn client(path: &Path, packets: &[Vec<u8>]) -> isize {
        use std::os::unix::ffi::OsStrExt;
        let path = path.as_os_str().as_bytes();
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as u16;
            for (i, b) in path.iter().enumerate() {
                addr.sun_path[i] = *b as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
            if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len as u32) != 0 {
                return -1;
            }
            libc::send(
                fd,
                [8u8, 1].as_ptr() as *const libc::c_void,
                2,
                libc::MSG_NOSIGNAL,
            );
            let mut answer = [0u8; 16];
            let n = libc::recv(fd, answer.as_mut_ptr() as *mut libc::c_void, 16, 0);
            if n > 0 {
                for p in packets {
                    libc::send(
                        fd,
                        p.as_ptr() as *const libc::c_void,
                        p.len(),
                        libc::MSG_NOSIGNAL,
                    );
                }
            }
            libc::close(fd);
            n
        }
    }

    async fn until(what: &str, f: impl Fn(&StreamEvidence) -> bool, sandbox: &str) {
        for _ in 0..500 {
            if evidence(sandbox).is_some_and(|e| f(&e)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: {:?}", evidence(sandbox));
    }

    #[tokio::test]
    async fn only_descendants_are_heard_and_the_directory_goes() {
        let bundle = std::env::temp_dir().join(format!("og-monitor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).unwrap();
        let sandbox = "mon-test";
        let config = listen(sandbox, &bundle).unwrap();
        let dir = bundle.join(socket_dir::DIR_NAME);
        assert_eq!(config, dir.join(socket_dir::CONFIG_NAME));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        let socket = dir.join(socket_dir::SOCKET_NAME);
        assert_eq!(
            cfg["trace_session"]["sinks"][0]["config"]["endpoint"],
            socket.display().to_string()
        );

        // The test process is not a descendant of itself: refused, no answer.
        let s = socket.clone();
        let answered = tokio::task::spawn_blocking(move || client(&s, &[]))
            .await
            .unwrap();
        // The listener closes the connection unanswered: EOF, or a reset
        // when the hello it did not read was still queued.
        assert!(
            answered <= 0,
            "a foreign peer gets no handshake ({answered})"
        );
        until("refusal counted", |e| e.refused == 1, sandbox).await;

        // A child of this process is: its start, a malformed packet and an
        // exit are read.
        let packets = vec![
            hex("08000100000000000a16089adace84d7d993f51810012001320263314a027368120263311a012f22072f62696e2f736822022d63224464642069663d2f6465762f7a65726f206f663d2f6465762f6e756c6c2062733d314d20636f756e743d313b20736c65657020302e32202620776169743b20657869742033"),
            vec![8, 0, 1, 0, 0, 0, 0, 0, 0x0a, 0xff, 0xff],
            hex("08000400000000000a1608e4a5e78bd7d993f51810022002320263314a026464"),
        ];
        // SAFETY: the child makes only raw syscalls, then _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let n = client(&socket, &packets);
            unsafe { libc::_exit(if n == 2 { 0 } else { 1 }) };
        }
        assert!(pid > 0);
        until("the child's stream", |e| e.ended, sandbox).await;
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0, "the child got the handshake answer");
        let e = evidence(sandbox).unwrap();
        assert_eq!(e.started, ["c1"]);
        assert_eq!(e.exits, [("c1".to_string(), 2, 0)]);
        assert_eq!((e.malformed, e.refused), (1, 1));
        assert!(e.summary("c1").contains("refused=1"), "{}", e.summary("c1"));

        close(sandbox);
        assert!(!dir.exists(), "directory removed on close");
        assert!(evidence(sandbox).is_none());
        std::fs::remove_dir_all(&bundle).unwrap();
    }

    #[test]
    fn leftovers_of_a_dead_shim_are_removed() {
        let bundle = std::env::temp_dir().join(format!("og-monitor-dead-{}", std::process::id()));
        let dir = bundle.join(socket_dir::DIR_NAME);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(socket_dir::SOCKET_NAME), b"").unwrap();
        remove_leftovers(&bundle).unwrap();
        assert!(!dir.exists());
        remove_leftovers(&bundle).unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}
