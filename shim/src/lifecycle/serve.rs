//! Serve mode: the long-lived shim. One thread, event-driven: the ttrpc
//! server, the SIGCHLD reaper and the event sender share a current-thread
//! runtime, so an idle shim sleeps in epoll and uses no CPU.

use std::os::fd::FromRawFd;
use std::sync::Arc;

use containerd_shim::Flags;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;
use log::{error, info, warn};
use oomguard_runtimes::reaper::reaper;

use super::LISTENER_FD;
use crate::events::Publisher;
use crate::task::service::TaskService;

pub fn run(flags: &Flags) -> Result<(), String> {
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
    {
        eprintln!("serve: no log pipe from containerd: {e}");
    }
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| "serve: TTRPC_ADDRESS is not set (containerd sets it)".to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
    let service = Arc::new(TaskService::new(flags.namespace.clone(), publisher));
    let shutdown = service.shutdown.clone();
    let inflight = service.inflight.clone();
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(create_task(service));
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

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("serve: SIGTERM handler: {e}"))?;
    loop {
        tokio::select! {
            _ = shutdown.notified() => break,
            _ = term.recv() => info!("serve: SIGTERM ignored; containerd ends a shim with Shutdown"),
        }
    }
    // Answers still owed (a Kill whose exit led to this Shutdown) go out
    // first: the server's shutdown drops running handlers.
    let left = inflight.settle(std::time::Duration::from_secs(5)).await;
    if left > 0 {
        warn!("serve: shutting down with {left} RPC(s) unanswered after 5 s");
    }
    // Let the last answers reach containerd before the socket goes.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let _ = server.shutdown().await;
    if let Some(path) = flags.socket.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    oomguard_runtimes::gvisor::monitor::close_all();
    info!("shim exiting");
    Ok(())
}
