//! The exit path: every reaped container process goes through here, once.
//!
//! Order is the product's promise: for an init, the verdict is made (and a
//! TaskOOM acknowledged by containerd) before Wait is released and before
//! TaskExit is published.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::MessageField;
use log::{info, warn};
use oomguard_runtimes::Exit;

use crate::events::{timestamp, Event, Publisher};
use crate::oom::Verdict;
use crate::task::container::Container;
use crate::task::process::{ExitInfo, Process};

/// How long an init's exit waits for its execs' exits to be reaped first
/// (the kernel kills them with the pid namespace, so this is short).
const EXECS_FIRST: Duration = Duration::from_secs(2);

pub async fn init_exited(container: Arc<Container>, exit: Exit, publisher: Publisher) {
    let execs = container.running_execs();
    if !execs.is_empty() {
        let all = futures_lite_join(execs);
        if tokio::time::timeout(EXECS_FIRST, all).await.is_err() {
            warn!(
                "exit id={}: execs still running after init exit",
                container.id
            );
        }
    }
    container.init.io.lock().await.drain().await;

    let verdict = container.judge(&exit).await;
    info!(
        "verdict id={} pid={} wait_status=\"{}\" oom_killed={} exit_status={} reason=\"{}\"",
        container.id,
        exit.pid,
        exit.status,
        verdict.oom_killed,
        verdict.exit_status,
        verdict.reason
    );
    if verdict.oom_event {
        let mut oom = TaskOOM::new();
        oom.container_id = container.id.clone();
        if !publisher.publish_acked(Event::Oom(oom)).await {
            warn!(
                "exit id={}: TaskOOM was not acknowledged; exit goes on",
                container.id
            );
        }
    }
    publish_exit(&container, &container.init, &exit, &verdict, &publisher);
}

pub async fn exec_exited(
    container: Arc<Container>,
    process: Arc<Process>,
    exit: Exit,
    publisher: Publisher,
) {
    process.io.lock().await.drain().await;
    let verdict = container.judge_exec(&exit).await;
    info!(
        "exit id={} exec_id={} pid={} wait_status=\"{}\" exit_status={}",
        container.id, process.exec_id, exit.pid, exit.status, verdict.exit_status
    );
    if verdict.oom_event {
        let mut oom = TaskOOM::new();
        oom.container_id = container.id.clone();
        publisher.publish_acked(Event::Oom(oom)).await;
    }
    publish_exit(&container, &process, &exit, &verdict, &publisher);
}

fn publish_exit(
    container: &Container,
    process: &Process,
    exit: &Exit,
    verdict: &Verdict,
    publisher: &Publisher,
) {
    process.set_exited(ExitInfo {
        exit_status: verdict.exit_status,
        at: exit.at,
    });
    let mut ev = TaskExit::new();
    ev.container_id = container.id.clone();
    ev.id = if process.exec_id.is_empty() {
        container.id.clone()
    } else {
        process.exec_id.clone()
    };
    ev.pid = exit.pid as u32;
    ev.exit_status = verdict.exit_status;
    ev.exited_at = MessageField::some(timestamp(exit.at));
    publisher.publish(Event::Exit(ev));
}

async fn futures_lite_join(execs: Vec<Arc<Process>>) {
    for p in execs {
        p.wait().await;
    }
}
