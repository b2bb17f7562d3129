//! One process of a container (its init or an exec) and its state:
//! created → running (→ paused) → stopped, with the decided exit.

use std::sync::Mutex;
use std::time::SystemTime;

use containerd_shim_protos::types::task::Status;
use tokio::sync::watch;

use crate::stdio::{IoHandles, StdioSpec};

/// The exit as it is reported to containerd: decided once, never changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_status: u32,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl State {
    pub fn to_proto(self) -> Status {
        match self {
            State::Created => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Paused => Status::PAUSED,
            State::Stopped => Status::STOPPED,
        }
    }
}

struct Inner {
    state: State,
    pid: i32,
}

pub struct Process {
    /// Empty for the init process.
    pub exec_id: String,
    pub stdio: StdioSpec,
    inner: Mutex<Inner>,
    exit: watch::Sender<Option<ExitInfo>>,
    /// Set when the process was reaped, before its exit is decided (which
    /// can wait for containerd to acknowledge a TaskOOM).
    reaped: watch::Sender<bool>,
    pub io: tokio::sync::Mutex<IoHandles>,
    /// Held by Start until TaskStart is published: an exit reaped meanwhile
    /// waits for it, so containerd never sees TaskExit before TaskStart.
    pub starting: tokio::sync::Mutex<()>,
    /// Held by Kill while the runtime signals the process: its exit is
    /// published only after, as the Go shim does. Otherwise containerd can
    /// handle the exit (Delete, Shutdown, closing the connection) before the
    /// Kill that caused it is answered, and CRI's StopPodSandbox fails with
    /// "ttrpc: closed" (seen under a loaded CI).
    pub signalling: tokio::sync::Mutex<()>,
}

impl Process {
    pub fn new(exec_id: String, stdio: StdioSpec) -> Self {
        Process {
            exec_id,
            stdio,
            inner: Mutex::new(Inner {
                state: State::Created,
                pid: 0,
            }),
            exit: watch::channel(None).0,
            reaped: watch::channel(false).0,
            io: tokio::sync::Mutex::new(IoHandles::default()),
            starting: tokio::sync::Mutex::new(()),
            signalling: tokio::sync::Mutex::new(()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pid(&self) -> i32 {
        self.inner().pid
    }

    pub fn set_pid(&self, pid: i32) {
        self.inner().pid = pid;
    }

    pub fn state(&self) -> State {
        self.inner().state
    }

    /// Moves to `to` unless the process already stopped (an exit can race a
    /// late Start/Resume; the exit wins).
    pub fn set_state(&self, to: State) {
        let mut inner = self.inner();
        if inner.state != State::Stopped {
            inner.state = to;
        }
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Records the decided exit and releases every Wait.
    pub fn set_exited(&self, info: ExitInfo) {
        self.inner().state = State::Stopped;
        self.exit.send_replace(Some(info));
    }

    pub fn set_reaped(&self) {
        self.reaped.send_replace(true);
    }

    pub fn is_reaped(&self) -> bool {
        *self.reaped.borrow()
    }

    /// Resolves once the process was reaped.
    pub async fn reaped(&self) {
        let mut rx = self.reaped.subscribe();
        // The sender lives as long as the process.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Resolves with the decided exit.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as the process; unreachable in
                // practice, but never answer Wait with a made-up success.
                return ExitInfo {
                    exit_status: 255,
                    at: SystemTime::now(),
                };
            }
        }
    }
}
