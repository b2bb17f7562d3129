//! Serve mode: the long-lived shim. One thread, event-driven: the ttrpc
//! server, the SIGCHLD reaper and the event sender share a current-thread
//! runtime, so an idle shim sleeps in epoll and uses no CPU.

use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::Flags;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;
use log::{error, info, warn};
use oomguard_runtimes::reaper::reaper;
use tokio::signal::unix::{signal, SignalKind};

use super::LISTENER_FD;
use crate::events::Publisher;
use crate::task::service::TaskService;

/// How long a Shutdown from containerd waits for queued events and running
/// RPCs (containerd is there, so this takes milliseconds unless it hangs).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long SIGTERM/SIGINT wait for the same: short, so that a node's
/// shutdown is not held up by a containerd that is already gone.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);

/// How long a blocking-pool thread (runtime commands, cgroup writes) waits
/// for more work before it ends. Tokio's default is 10 s; a container's
/// commands come in bursts (create, start; kill, delete), so a second keeps
/// a burst on one thread and lets an idle shim drop back to its two threads
/// (and wake no more) soon after, instead of ending that thread 10 s later.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

pub fn run(flags: &Flags) -> Result<(), String> {
    if let Err(e) = crate::logger::init(flags.debug, "info") {
        eprintln!("serve: no log pipe from containerd: {e}");
    }
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| "serve: TTRPC_ADDRESS is not set (containerd sets it)".to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
        .map_err(|e| format!("serve: runtime: {e}"))?;
    let result = rt.block_on(serve(flags, ttrpc_address));
    if let Err(e) = &result {
        error!("{e}");
    }
    result
}

async fn serve(flags: &Flags, ttrpc_address: String) -> Result<(), String> {
    reaper()
        .install()
        .map_err(|e| format!("serve: become subreaper: {e}"))?;
    crate::oom::kmsg::start();
    // SAFETY: `start` passes the bound listening socket as this fd.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD) };
    let listener = Listener::try_from(std_listener)
        .map_err(|e| format!("serve: listener on fd {LISTENER_FD}: {e}"))?;

    let publisher = Publisher::new(ttrpc_address, flags.namespace.clone());
    let service = Arc::new(TaskService::new(flags.namespace.clone(), publisher.clone()));
    let shutdown = service.shutdown.clone();
    let inflight = service.inflight.clone();
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(create_task(service.clone()));
    server
        .start()
        .await
        .map_err(|e| format!("serve: ttrpc server: {e}"))?;
    info!(
        "serving namespace={} id={} pid={}",
        flags.namespace,
        flags.id,
        std::process::id()
    );

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("serve: SIGTERM handler: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("serve: SIGINT handler: {e}"))?;
    let (grace, by_signal) = tokio::select! {
        _ = shutdown.notified() => (SHUTDOWN_GRACE, false),
        _ = term.recv() => (signalled("SIGTERM", &service), true),
        _ = int.recv() => (signalled("SIGINT", &service), true),
    };
    // No sandbox may stay frozen by a round this shim leaves unfinished.
    crate::oom::own_limit::quiesce(grace).await;
    // What is owed goes out first, within `grace`: the events queued for
    // containerd, and the answers of RPCs still running (the server's
    // shutdown drops running handlers; CI once saw a Kill whose exit led to
    // Delete and Shutdown lose its answer). A second signal cuts it short.
    let deadline = tokio::time::Instant::now() + grace;
    let owed = async {
        let left = publisher.flush(grace).await;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        (left, inflight.settle(remaining).await)
    };
    let (events_left, rpcs_left) = tokio::select! {
        r = owed => r,
        _ = term.recv() => (publisher.flush(Duration::ZERO).await, inflight.running()),
        _ = int.recv() => (publisher.flush(Duration::ZERO).await, inflight.running()),
    };
    if events_left > 0 || rpcs_left > 0 {
        warn!(
            "serve: exiting with {events_left} event(s) undelivered and {rpcs_left} RPC(s) unanswered (grace {grace:?})"
        );
    }
    // Let the last answers reach containerd before the socket goes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The server's graceful shutdown waits for every handler, and after a
    // signal some never end (a Wait on a container still running): the
    // process exit closes those connections.
    if !by_signal {
        let _ = tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await;
    }
    if let Some(path) = flags.socket.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    oomguard_runtimes::gvisor::monitor::close_all();
    info!("shim exiting");
    Ok(())
}

/// SIGTERM/SIGINT end the shim as they end containerd's Go shim: the
/// containers are left running (reparented), and containerd, seeing the
/// shim's socket close, cleans up through `delete` (which kills them).
fn signalled(name: &str, service: &TaskService) -> Duration {
    info!(
        "serve: {name}: exiting within {SIGNAL_GRACE:?}; {} container(s) left to containerd's clean-up",
        service.container_count()
    );
    SIGNAL_GRACE
}
