//! The exit path: every reaped container process goes through here, once.
//!
//! Order is the product's promise: for an init, the verdict is made (and a
//! due TaskOOM acknowledged by containerd) before Wait is released and before
//! TaskExit is published.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::MessageField;
use log::{info, warn};
use oomguard_runtimes::Exit;

use crate::events::{timestamp, Event, Publisher};
use crate::oom::Verdict;
use crate::task::container::Container;
use crate::task::process::{ExitInfo, Process};

/// How long an init's exit waits for its execs' exits to be reaped first
/// (the kernel kills them with the pid namespace, or the kill-all does, so
/// this is short).
const EXECS_FIRST: Duration = Duration::from_secs(2);

pub async fn init_exited(container: Arc<Container>, exit: Exit, publisher: Publisher) {
    // The verdict comes first, from the evidence as the init left it: it
    // publishes a due TaskOOM and waits for containerd's answer, so a child
    // the OOM killer took is reported as such, never as a victim of the
    // kill-all below. A Start in progress publishes TaskStart first.
    let verdict = {
        let _started = container.init.starting.lock().await;
        let verdict = container.oom.settle(&exit, true).await;
        // A gVisor container the shim killed for its own limit ends 137.
        container.own_memory.settle(verdict).await
    };
    if container.kill_all_on_exit {
        container.kill_all_after_init().await;
    }
    let execs = container.running_execs();
    if !execs.is_empty() {
        let all = async {
            for p in &execs {
                p.reaped().await;
            }
        };
        if tokio::time::timeout(EXECS_FIRST, all).await.is_err() {
            warn!(
                "exit id={}: execs still running after init exit",
                container.id
            );
        }
        // A reaped exec's exit goes first however long its verdict takes
        // (its TaskOOM may wait for containerd to come back).
        for p in execs.iter().filter(|p| p.is_reaped()) {
            p.wait().await;
        }
    }
    container.stop_warning();
    let stderr = {
        let mut io = container.init.io.lock().await;
        io.drain().await;
        io.stderr_report.take()
    };
    if verdict.oom_killed {
        let story = match container.own_memory.story().await {
            Some(own) => own,
            None => container.oom.story(),
        };
        container.story.oom_killed(&container.id, &story, stderr);
    }
    publish_exit(&container, &container.init, &exit, &verdict, &publisher).await;
}

pub async fn exec_exited(
    container: Arc<Container>,
    process: Arc<Process>,
    exit: Exit,
    publisher: Publisher,
) {
    process.set_reaped();
    process.io.lock().await.drain().await;
    let verdict = container.oom.settle(&exit, false).await;
    info!(
        "exit id={} exec_id={} pid={} wait_status=\"{}\" exit_status={}",
        container.id, process.exec_id, exit.pid, exit.status, verdict.exit_status
    );
    publish_exit(&container, &process, &exit, &verdict, &publisher).await;
}

/// Releases Wait with the decided status, then tells containerd; after a
/// Kill in progress on the process has its answer.
async fn publish_exit(
    container: &Container,
    process: &Process,
    exit: &Exit,
    verdict: &Verdict,
    publisher: &Publisher,
) {
    let _signalled = process.signalling.lock().await;
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
