//! OCI runtime binaries as the shim drives them.
//!
//! One trait, [`OciRuntime`], for everything the Task service asks of a
//! runtime; one driver per binary family. Every binary runs under the shim's
//! [`reaper`], which is the only place processes are waited for.

pub mod command;
#[cfg(test)]
mod fuzz_tests;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gvisor;
pub mod pidfd;
pub mod reaper;
pub mod runc;
pub mod runsc;
pub mod spec;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

pub use reaper::{Exit, ExitReceiver, WaitStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{binary} {action}: cannot run it: {source}")]
    Spawn {
        binary: String,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{binary} {action} {id}: {status}: {message}")]
    Failed {
        binary: String,
        action: &'static str,
        id: String,
        status: WaitStatus,
        message: String,
    },
    #[error("{binary} {action} {id}: unreadable output: {message}")]
    BadOutput {
        binary: String,
        action: &'static str,
        id: String,
        message: String,
    },
    #[error("{id}: {message}")]
    Spec { id: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    /// The runtime has no such container (already deleted, never created).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Failed { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("does not exist") || m.contains("not found") || m.contains("no such")
            }
            _ => false,
        }
    }

    /// The container or its sandbox has already stopped; a kill has nothing
    /// left to signal. runc says "container not running", runsc "sandbox is
    /// not running" (DESIGN.md §4): both mean "already gone", not "retry".
    pub fn is_not_running(&self) -> bool {
        match self {
            Error::Failed { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("not running")
                    || m.contains("process already finished")
                    || m.contains("no such process")
                    || m.contains("container is stopped")
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The standard streams handed to a container process (None = /dev/null).
#[derive(Default)]
pub struct ProcessStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

pub struct CreateOptions<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub stdio: ProcessStdio,
}

pub struct ExecOptions<'a> {
    pub process_file: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub stdio: ProcessStdio,
}

/// `state` as runc-compatible runtimes print it.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerState {
    pub id: String,
    #[serde(default)]
    pub pid: i32,
    pub status: String,
    #[serde(default)]
    pub bundle: String,
}

/// One reading of a shared sandbox's memory, as its runtime accounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUsage {
    /// Bytes charged to all containers of the sandbox together (the
    /// sandbox process's host memcg holds these plus the sandbox's own
    /// overhead).
    pub sandbox: u64,
    /// Each asked container's own bytes, in the order asked, or why they
    /// could not be read.
    pub containers: Vec<std::result::Result<u64, String>>,
}

/// A sandbox whose containers share one host memcg (a gVisor pod), whose
/// runtime accounts each container's memory and can stop the sandbox's
/// tasks and kill one container's processes. What the shim needs to
/// enforce a container's own memory limit where the kernel cannot.
#[async_trait]
pub trait SharedSandbox: Send + Sync {
    /// The same for every container of the sandbox: a shim enforces the
    /// limits of one sandbox's containers together.
    fn key(&self) -> String;
    /// Where container `id`'s figures come from, for log lines.
    fn source(&self, id: &str) -> String;
    /// The sandbox's and each container's usage, in one reading.
    async fn usage(&self, ids: &[&str]) -> std::result::Result<SandboxUsage, String>;
    /// Stops every task of the sandbox before it runs application code
    /// again (a task in a system call finishes the call first); returns
    /// once none runs. Each freeze needs its [`thaw`](Self::thaw).
    async fn freeze(&self) -> std::result::Result<(), String>;
    async fn thaw(&self) -> std::result::Result<(), String>;
    /// SIGKILL to every process of container `id`; a frozen task takes it
    /// before it runs again.
    async fn kill(&self, id: &str) -> std::result::Result<(), String>;
}

/// How a container's own memory usage is known.
pub enum OwnMemory {
    /// The container has a host memcg of its own: the kernel enforces its
    /// limit and the memcg reports its usage.
    HostMemcg,
    /// The container shares its host memcg with others (a container that
    /// joins a gVisor sandbox); the runtime accounts its own usage.
    Shared(Arc<dyn SharedSandbox>),
    /// The container shares its host memcg and the runtime keeps no usage of
    /// its own: why.
    Unavailable(String),
}

/// The OCI runtime binary behind one container.
#[async_trait]
pub trait OciRuntime: Send + Sync {
    fn binary(&self) -> &Path;
    fn root(&self) -> &Path;
    async fn create(&self, id: &str, opts: CreateOptions<'_>) -> Result<()>;
    async fn start(&self, id: &str) -> Result<()>;
    async fn exec(&self, id: &str, opts: ExecOptions<'_>) -> Result<()>;
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;
    async fn delete(&self, id: &str, force: bool) -> Result<()>;
    async fn pause(&self, id: &str) -> Result<()>;
    async fn resume(&self, id: &str) -> Result<()>;
    async fn ps(&self, id: &str) -> Result<Vec<i32>>;
    /// `resources` is an OCI `LinuxResources` JSON document.
    async fn update(&self, id: &str, resources: &[u8]) -> Result<()>;
    async fn state(&self, id: &str) -> Result<ContainerState>;

    /// The exit of a container's init, whose pid the runtime's pid file
    /// gave. By default the reaper reports it (the shim is its subreaper).
    fn watch_init(&self, _id: &str, pid: i32) -> ExitReceiver {
        reaper::reaper().watch(pid)
    }

    /// Signals an exec process the way the runtime reaches it, where the
    /// host pid (the exec's `pid_file`) is not the process itself; `None`
    /// means "signal the host pid". (runsc: the host pid is `runsc exec`,
    /// and SIGKILL to it does not reach the process in the sandbox.)
    async fn kill_exec(&self, _id: &str, _pid_file: &Path, _signal: u32) -> Option<Result<()>> {
        None
    }

    /// Whether the container's processes are host processes (runc), which
    /// the shim can see in the container's cgroup, or live inside a sandbox
    /// kernel (gVisor), where only the runtime can reach them.
    fn processes_on_host(&self) -> bool {
        true
    }

    /// Whether a status is the runtime's stand-in for "unknown" rather than
    /// the process's own (gVisor's 128 when the sandbox died under it).
    fn status_unavailable(&self, _status: &WaitStatus) -> bool {
        false
    }

    /// What the runtime itself reported about the container's end (gVisor's
    /// monitoring stream), for the verdict's log line.
    fn exit_evidence(&self, _id: &str) -> Option<String> {
        None
    }

    /// After Create, before Start: how the container's own memory usage
    /// can be read (a shared sandbox's container has no figure of its own
    /// until it starts, but its limit is watched from the first byte).
    async fn own_memory(&self, _id: &str) -> OwnMemory {
        OwnMemory::HostMemcg
    }
}

/// Where a runtime keeps its state when the configuration names no root.
pub fn default_root(binary: &Path, namespace: &str) -> PathBuf {
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("runc");
    PathBuf::from(format!("/run/containerd/{name}")).join(namespace)
}
