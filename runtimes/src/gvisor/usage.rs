//! A gVisor pod's memory, container by container, and the sandbox
//! controls that enforce a container's own limit.
//!
//! All containers of a pod live in one sandbox process, so the host memcg
//! only knows the pod's total. Since release-20231218 the sentry gives each
//! container that mounts cgroupfs (`/sys/fs/cgroup`, as CRI does) a memory
//! cgroup of its own, `/<container id>`, whose `memory.usage_in_bytes` counts
//! the memory the sentry charged to that container's tasks. It is read here
//! through the sandbox's control server (the socket `runsc read-control`
//! uses), every container of the pod and the root in one call on a kept
//! connection: about 0.2 ms, where running `runsc read-control` costs ~20 ms
//! wall and ~11 ms CPU per file. A second kept connection pauses and
//! resumes the sandbox's tasks and signals one container's processes. Older runsc
//! (20221219) keeps one sandbox-wide figure only. Facts and measurements:
//! `NOTES.md` §6 and §7.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::control::{ControlConnection, ControlError};
use super::urpc::{parse_bytes, ControlFile};
use crate::{SandboxUsage, SharedSandbox};

/// The first runsc release whose sandboxes give each container its own
/// memory cgroup (gVisor commit "Mount cgroups per container in runsc").
pub const PER_CONTAINER_MEMCG_SINCE: u32 = 20231218;

const USAGE_FILE: &str = "memory.usage_in_bytes";

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    State { file: String, message: String },
}

/// The release date in `runsc --version` output ("runsc version
/// 0.0~20240729.0" from Debian, "runsc version release-20240729.0" from
/// gVisor's builds).
pub fn parse_release(version_output: &str) -> Option<u32> {
    let line = version_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("runsc version "))?;
    // The first run of exactly eight digits is the release date.
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 8 {
                return line[start..i].parse().ok();
            }
        } else {
            i += 1;
        }
    }
    None
}

/// The memory cgroup the sentry gives a container.
pub fn container_cgroup(id: &str) -> String {
    format!("/{id}")
}

/// The control socket of the sandbox `sandbox` as runsc recorded it in the
/// state file of container `id` (`ROOT/<id>_sandbox:<sandbox>.state`, JSON,
/// `sandbox.controlSocketPath`; runsc >= release-20230920).
pub fn control_socket(root: &Path, id: &str, sandbox: &str) -> Result<PathBuf, UsageError> {
    let file = root.join(format!("{id}_sandbox:{sandbox}.state"));
    let text = std::fs::read(&file).map_err(|source| UsageError::Io {
        what: format!("runsc state file {}", file.display()),
        source,
    })?;
    control_socket_from_state(&text).ok_or_else(|| UsageError::State {
        file: file.display().to_string(),
        message: "no sandbox.controlSocketPath in runsc's state file".into(),
    })
}

pub fn control_socket_from_state(state: &[u8]) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_slice(state).ok()?;
    let p = v.pointer("/sandbox/controlSocketPath")?.as_str()?;
    (!p.is_empty() && p.starts_with('/')).then(|| PathBuf::from(p))
}

/// The usage files of `/` and each container, in the order they are read:
/// the root first. The sentry reads the files one after the other and a
/// read can wait behind an allocation in progress (seen: a container's 12
/// MB, then the root's 316 MB once a 300 MB read() had committed its
/// buffer), so the containers' figures are the freshest; the root's is
/// raised to the largest of them so it stays a bound.
pub fn usage_files(cgroups: &[String]) -> Vec<ControlFile<'_>> {
    std::iter::once("/")
        .chain(cgroups.iter().map(String::as_str))
        .map(|path| ControlFile {
            controller: "memory",
            path,
            name: USAGE_FILE,
        })
        .collect()
}

/// A reading from the answers to [`usage_files`]. A container's file that
/// the sentry could not read, or that is not a byte count, is that
/// container's error; the root's is the reading's.
pub fn usage_from_answers(
    cgroups: &[String],
    answers: Vec<super::urpc::FileAnswer>,
) -> Result<SandboxUsage, String> {
    let mut it = answers.into_iter();
    let parse = |path: &str, answer: Option<super::urpc::FileAnswer>| {
        let file = format!("{}/{USAGE_FILE}", path.trim_end_matches('/'));
        match answer {
            Some(Ok(v)) => parse_bytes(&v).ok_or_else(|| {
                format!(
                    "{file}: not a byte count: {:?}",
                    v.chars().take(40).collect::<String>()
                )
            }),
            Some(Err(e)) => Err(format!("{file}: {e}")),
            None => Err(format!("{file}: no answer")),
        }
    };
    let root = parse("/", it.next())?;
    let containers: Vec<Result<u64, String>> =
        cgroups.iter().map(|c| parse(c, it.next())).collect();
    let largest = containers
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .copied()
        .max()
        .unwrap_or(0);
    Ok(SandboxUsage {
        sandbox: root.max(largest),
        containers,
    })
}

/// A gVisor sandbox reached through its control socket, on two kept
/// connections: the server serves each connection's calls in order, and a
/// reading can wait on a busy sandbox (50 ms seen on a saturated host),
/// which must not hold back the pause that stops the sandbox.
pub struct GvisorSandbox {
    socket: PathBuf,
    reads: Mutex<ControlConnection>,
    controls: Mutex<ControlConnection>,
}

impl GvisorSandbox {
    pub fn new(socket: PathBuf) -> Self {
        GvisorSandbox {
            reads: Mutex::new(ControlConnection::new(socket.clone())),
            controls: Mutex::new(ControlConnection::new(socket.clone())),
            socket,
        }
    }

    /// `/` and each container's usage, in one call.
    pub async fn read(&self, ids: &[&str]) -> Result<SandboxUsage, ControlError> {
        let cgroups: Vec<String> = ids.iter().map(|id| container_cgroup(id)).collect();
        let answers = self
            .reads
            .lock()
            .await
            .read_files(&usage_files(&cgroups))
            .await?;
        usage_from_answers(&cgroups, answers).map_err(|message| ControlError::Protocol {
            socket: self.socket.display().to_string(),
            method: super::urpc::READ_CONTROL_FILES,
            message,
        })
    }
}

#[async_trait]
impl SharedSandbox for GvisorSandbox {
    fn key(&self) -> String {
        self.socket.display().to_string()
    }

    fn source(&self, id: &str) -> String {
        format!(
            "gvisor_memcg({} via {})",
            container_cgroup(id),
            self.socket.display()
        )
    }

    async fn usage(&self, ids: &[&str]) -> Result<SandboxUsage, String> {
        self.read(ids).await.map_err(|e| e.to_string())
    }

    async fn freeze(&self) -> Result<(), String> {
        let mut c = self.controls.lock().await;
        c.pause().await.map_err(|e| e.to_string())
    }

    async fn thaw(&self) -> Result<(), String> {
        let mut c = self.controls.lock().await;
        c.resume().await.map_err(|e| e.to_string())
    }

    async fn kill(&self, id: &str) -> Result<(), String> {
        let mut c = self.controls.lock().await;
        c.signal_all(id, libc::SIGKILL)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_release("runsc version 0.0~20240729.0\nspec: 1.2.0\n"),
            Some(20240729)
        );
        assert_eq!(
            parse_release("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n"),
            Some(20221219)
        );
        assert_eq!(
            parse_release("runsc version release-20231218.0\nspec: 1.1.0\n"),
            Some(20231218)
        );
        assert_eq!(parse_release("runsc version VERSION_MISSING\n"), None);
        assert_eq!(parse_release(""), None);
        assert_eq!(parse_release("runsc version 2024072\n"), None);
    }

    #[test]
    fn socket_from_state_file() {
        // An excerpt of runsc 20240729's ROOT/B_sandbox:S.state.
        let state = br#"{"bundle":"/tmp/w12/bB","created":"2026-12-03T09:48:29.816995914Z","owner":"","saved":true,"sandbox":{"id":"S","pid":23702,"uid":0,"gid":0,"cgroup":null,"originalOomScoreAdj":0,"registeredMetrics":null,"metricMetadata":null,"metricServerAddress":"","controlSocketPath":"/tmp/w12/root24/runsc-S.sock","mountHints":null},"status":2}"#;
        assert_eq!(
            control_socket_from_state(state),
            Some(PathBuf::from("/tmp/w12/root24/runsc-S.sock"))
        );
        assert_eq!(
            control_socket_from_state(br#"{"sandbox":{"id":"S"}}"#),
            None
        );
        assert_eq!(
            control_socket_from_state(br#"{"sandbox":{"controlSocketPath":"rel.sock"}}"#),
            None
        );
        assert_eq!(control_socket_from_state(b"{not json"), None);
    }

    /// Answers of runsc 20240729 for a pod whose container A reads 2007040
    /// bytes and whose B has no memory cgroup (no cgroupfs mount).
    #[test]
    fn readings() {
        let cgroups = vec!["/A".to_string(), "/B".to_string()];
        let files = usage_files(&cgroups);
        assert_eq!(
            files.iter().map(|f| f.path).collect::<Vec<_>>(),
            ["/", "/A", "/B"]
        );
        let u = usage_from_answers(
            &cgroups,
            vec![
                Ok("6021120".into()),
                Ok("2007040".into()),
                Err("no such file or directory".into()),
            ],
        )
        .unwrap();
        assert_eq!(u.sandbox, 6021120);
        assert_eq!(u.containers[0], Ok(2007040));
        assert_eq!(
            u.containers[1],
            Err("/B/memory.usage_in_bytes: no such file or directory".into())
        );
        // The root read before a container's allocation committed: raised.
        let u = usage_from_answers(
            &cgroups,
            vec![
                Ok("20000000".into()),
                Ok("2007040".into()),
                Ok("83886080".into()),
            ],
        )
        .unwrap();
        assert_eq!(u.sandbox, 83886080);
        let e = usage_from_answers(&cgroups, vec![Err("no such cgroup controller".into())])
            .unwrap_err();
        assert!(
            e == "/memory.usage_in_bytes: no such cgroup controller",
            "{e}"
        );
        let u = usage_from_answers(&cgroups, vec![Ok("1".into()), Ok("-7".into())]).unwrap();
        assert!(u.containers[0]
            .as_ref()
            .unwrap_err()
            .contains("not a byte count"));
        assert!(u.containers[1].as_ref().unwrap_err().contains("no answer"));
    }
}
