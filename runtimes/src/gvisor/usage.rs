//! A container's own memory usage inside a gVisor sandbox.
//!
//! All containers of a pod live in one sandbox process, so the host memcg
//! only knows the pod's total. Since release-20231218 the sentry gives each
//! container that mounts cgroupfs (`/sys/fs/cgroup`, as CRI does) a memory
//! cgroup of its own, `/<container id>`, whose `memory.usage_in_bytes` counts
//! the memory the sentry charged to that container's tasks. It is read here
//! through the sandbox's control server (the socket `runsc read-control`
//! uses), in one batched call: about 0.2 ms, where running `runsc
//! read-control` costs ~20 ms wall and ~11 ms CPU per file. Older runsc
//! (20221219) keeps one sandbox-wide figure only. Facts and measurements:
//! `NOTES.md` §6.
//!
//! The control server's protocol (gVisor's "urpc"): a stream socket; the
//! client writes one JSON object `{"method":M,"arg":A}`, the server answers
//! with one JSON object `{"success":B,"err":S,"result":R}`; no framing, the
//! JSON value ends the message. The answer is untrusted (the sandbox runs
//! the application) and bounded here.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::{OwnUsage, OwnUsageSampler};

/// The first runsc release whose sandboxes give each container its own
/// memory cgroup (gVisor commit "Mount cgroups per container in runsc").
pub const PER_CONTAINER_MEMCG_SINCE: u32 = 20231218;

/// The most an answer may take; a larger one is refused, not buffered.
const MAX_ANSWER: usize = 64 * 1024;

/// One sample can wait behind a large allocation in the sentry (seen: 0.4 s
/// while a 300 MB read() committed its buffer).
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);

/// `sun_path` is 108 bytes; longer socket paths are reached via an O_PATH
/// descriptor, as runsc itself does.
const SUN_PATH_MAX: usize = 108;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("sandbox control server at {socket}: {message}")]
    Protocol { socket: String, message: String },
    #[error("sandbox control server at {socket}: no answer within {timeout:?}")]
    Timeout { socket: String, timeout: Duration },
    /// The sentry answered, for this file, with an error (e.g. "no such file
    /// or directory": the container has no cgroup of its own).
    #[error("{path}/{name}: {message}")]
    File {
        path: String,
        name: String,
        message: String,
    },
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
    control_socket_from_state(&text).ok_or_else(|| UsageError::Protocol {
        socket: file.display().to_string(),
        message: "no sandbox.controlSocketPath in runsc's state file".into(),
    })
}

pub fn control_socket_from_state(state: &[u8]) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_slice(state).ok()?;
    let p = v.pointer("/sandbox/controlSocketPath")?.as_str()?;
    (!p.is_empty() && p.starts_with('/')).then(|| PathBuf::from(p))
}

/// A cgroup control file of the sentry's cgroupfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlFile<'a> {
    pub controller: &'a str,
    pub path: &'a str,
    pub name: &'a str,
}

#[derive(Serialize)]
struct ReadArg<'a> {
    file: ControlFile<'a>,
}

#[derive(Serialize)]
struct ReadArgs<'a> {
    args: Vec<ReadArg<'a>>,
}

#[derive(Serialize)]
struct Call<'a> {
    method: &'static str,
    arg: ReadArgs<'a>,
}

/// The request `Cgroups.ReadControlFiles` for `files`, as bytes.
pub fn read_request(files: &[ControlFile<'_>]) -> Vec<u8> {
    let call = Call {
        method: "Cgroups.ReadControlFiles",
        arg: ReadArgs {
            args: files.iter().map(|f| ReadArg { file: f.clone() }).collect(),
        },
    };
    // Serialising plain strings cannot fail.
    serde_json::to_vec(&call).unwrap_or_default()
}

#[derive(Deserialize)]
struct Answer {
    success: bool,
    #[serde(default)]
    err: String,
    #[serde(default)]
    result: Option<Results>,
}

#[derive(Deserialize)]
struct Results {
    #[serde(default)]
    results: Vec<FileResult>,
}

#[derive(Deserialize)]
struct FileResult {
    #[serde(default)]
    value: String,
    #[serde(default)]
    is_error: bool,
}

/// One file's answer: its value, or the sentry's error text.
pub type FileAnswer = Result<String, String>;

/// Decodes the answer to a `Cgroups.ReadControlFiles` call. `Ok(None)`: the
/// JSON value is not complete yet (read more). One answer per file, in order.
pub fn parse_answer(buf: &[u8], files: usize) -> Result<Option<Vec<FileAnswer>>, String> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Answer>();
    let answer = match it.next() {
        None => return Ok(None),
        Some(Err(e)) if e.is_eof() => return Ok(None),
        Some(Err(e)) => return Err(format!("malformed answer: {e}")),
        Some(Ok(a)) => a,
    };
    if !answer.success {
        return Err(format!("call failed: {}", answer.err));
    }
    let results = answer.result.map(|r| r.results).unwrap_or_default();
    if results.len() != files {
        return Err(format!("{} answers for {files} files", results.len()));
    }
    Ok(Some(
        results
            .into_iter()
            .map(|r| {
                if r.is_error {
                    Err(r.value)
                } else {
                    Ok(r.value)
                }
            })
            .collect(),
    ))
}

/// A byte count as `memory.usage_in_bytes` prints it.
pub fn parse_bytes(value: &str) -> Option<u64> {
    value.trim().parse().ok()
}

/// The sandbox's control server.
#[derive(Debug, Clone)]
pub struct ControlClient {
    socket: PathBuf,
}

impl ControlClient {
    pub fn new(socket: PathBuf) -> Self {
        ControlClient { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn name(&self) -> String {
        self.socket.display().to_string()
    }

    async fn connect(&self) -> Result<UnixStream, UsageError> {
        let io = |source| UsageError::Io {
            what: format!("connect {}", self.socket.display()),
            source,
        };
        if self.socket.as_os_str().len() < SUN_PATH_MAX {
            return UnixStream::connect(&self.socket).await.map_err(io);
        }
        let fd = nix::fcntl::open(
            &self.socket,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io(io::Error::from(e)))?;
        // The descriptor must stay open until connect() has resolved it.
        let r = UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd())).await;
        drop(fd);
        r.map_err(io)
    }

    /// Reads control files in one call; one answer per file, in order.
    pub async fn read_files(
        &self,
        files: &[ControlFile<'_>],
    ) -> Result<Vec<FileAnswer>, UsageError> {
        let call = async {
            let mut stream = self.connect().await?;
            let io = |what: &str, source| UsageError::Io {
                what: format!("{what} {}", self.socket.display()),
                source,
            };
            stream
                .write_all(&read_request(files))
                .await
                .map_err(|e| io("write to", e))?;
            let mut buf = Vec::with_capacity(512);
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| io("read from", e))?;
                if n == 0 {
                    return Err(UsageError::Protocol {
                        socket: self.name(),
                        message: format!("closed after {} bytes of answer", buf.len()),
                    });
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_ANSWER {
                    return Err(UsageError::Protocol {
                        socket: self.name(),
                        message: format!("answer longer than {MAX_ANSWER} bytes"),
                    });
                }
                match parse_answer(&buf, files.len()) {
                    Ok(Some(answers)) => return Ok(answers),
                    Ok(None) => continue,
                    Err(message) => {
                        return Err(UsageError::Protocol {
                            socket: self.name(),
                            message,
                        })
                    }
                }
            }
        };
        match tokio::time::timeout(SAMPLE_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(UsageError::Timeout {
                socket: self.name(),
                timeout: SAMPLE_TIMEOUT,
            }),
        }
    }

    /// `memory.usage_in_bytes` of each cgroup path, in one call.
    pub async fn memory_usage(&self, cgroups: &[&str]) -> Result<Vec<u64>, UsageError> {
        const NAME: &str = "memory.usage_in_bytes";
        let files: Vec<ControlFile<'_>> = cgroups
            .iter()
            .map(|path| ControlFile {
                controller: "memory",
                path,
                name: NAME,
            })
            .collect();
        let answers = self.read_files(&files).await?;
        cgroups
            .iter()
            .zip(answers)
            .map(|(path, a)| match a {
                Ok(v) => parse_bytes(&v).ok_or_else(|| UsageError::Protocol {
                    socket: self.name(),
                    message: format!("{path}/{NAME}: not a byte count: {v:?}"),
                }),
                Err(message) => Err(UsageError::File {
                    path: path.to_string(),
                    name: NAME.into(),
                    message,
                }),
            })
            .collect()
    }
}

/// One container's memory cgroup in its sandbox, with the root cgroup (all
/// containers) read in the same call.
pub struct ContainerMemcg {
    client: ControlClient,
    cgroup: String,
}

impl ContainerMemcg {
    pub fn new(client: ControlClient, id: &str) -> Self {
        ContainerMemcg {
            client,
            cgroup: container_cgroup(id),
        }
    }

    /// The root is read first: the sentry reads the files one after the
    /// other, and a read can wait behind an allocation in progress (seen:
    /// the container's 12 MB, then the root's 316 MB once a 300 MB read()
    /// had committed its buffer). Read last, the container's figure is the
    /// freshest; the root's is raised to it so it stays a bound.
    pub async fn read(&self) -> Result<OwnUsage, UsageError> {
        let v = self.client.memory_usage(&["/", &self.cgroup]).await?;
        match v[..] {
            [sandbox, container] => Ok(OwnUsage {
                container,
                sandbox: sandbox.max(container),
            }),
            // memory_usage answers once per cgroup asked.
            _ => Err(UsageError::Protocol {
                socket: self.client.name(),
                message: format!("{} values for 2 cgroups", v.len()),
            }),
        }
    }
}

#[async_trait]
impl OwnUsageSampler for ContainerMemcg {
    async fn sample(&self) -> Result<OwnUsage, String> {
        self.read().await.map_err(|e| e.to_string())
    }

    fn source(&self) -> String {
        format!(
            "gvisor_memcg({} via {})",
            self.cgroup,
            self.client.socket.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    // Bytes exchanged with runsc 20240729's sandbox (pod S with A and B, B's
    // cgroup and the root), captured on this machine.
    const REQUEST: &str = r#"{"method":"Cgroups.ReadControlFiles","arg":{"args":[{"file":{"controller":"memory","path":"/B","name":"memory.usage_in_bytes"}},{"file":{"controller":"memory","path":"/","name":"memory.usage_in_bytes"}}]}}"#;
    const ANSWER: &str = r#"{"success":true,"err":"","result":{"results":[{"value":"2007040","is_error":false},{"value":"6021120","is_error":false}]}}"#;
    const ANSWER_ERRORS: &str = r#"{"success":true,"err":"","result":{"results":[{"value":"no such file or directory","is_error":true},{"value":"no such cgroup controller","is_error":true}]}}"#;
    const ANSWER_UNKNOWN_METHOD: &str = r#"{"success":false,"err":"unknown method","result":null}"#;

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
    fn request_is_what_runsc_sends() {
        let files = [
            ControlFile {
                controller: "memory",
                path: "/B",
                name: "memory.usage_in_bytes",
            },
            ControlFile {
                controller: "memory",
                path: "/",
                name: "memory.usage_in_bytes",
            },
        ];
        assert_eq!(String::from_utf8(read_request(&files)).unwrap(), REQUEST);
    }

    #[test]
    fn answers() {
        let a = parse_answer(ANSWER.as_bytes(), 2).unwrap().unwrap();
        assert_eq!(a, vec![Ok("2007040".into()), Ok("6021120".into())]);
        let a = parse_answer(ANSWER_ERRORS.as_bytes(), 2).unwrap().unwrap();
        assert_eq!(a[0], Err("no such file or directory".into()));
        let e = parse_answer(ANSWER_UNKNOWN_METHOD.as_bytes(), 1).unwrap_err();
        assert!(e.contains("unknown method"), "{e}");
        // Incomplete: read more; never a partial result.
        for cut in [0, 1, 20, ANSWER.len() - 1] {
            assert_eq!(
                parse_answer(&ANSWER.as_bytes()[..cut], 2),
                Ok(None),
                "{cut}"
            );
        }
        assert!(
            parse_answer(ANSWER.as_bytes(), 3).is_err(),
            "count mismatch"
        );
        assert!(parse_answer(b"[1,2]", 1).is_err());
        assert!(parse_answer(b"}{", 1).is_err());
        assert!(
            parse_answer(br#"{"success":true,"result":{"results":[{"value":7}]}}"#, 1).is_err()
        );
        assert_eq!(parse_bytes("6021120\n"), Some(6021120));
        assert_eq!(parse_bytes("-1"), None);
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

    /// A server that answers with `answer`, written in `pieces`, after
    /// checking the request; returns its socket path.
    async fn server(dir: &Path, answer: &'static str, pieces: usize) -> PathBuf {
        let path = dir.join("runsc-S.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(req["method"], "Cgroups.ReadControlFiles");
            let step = answer.len().div_ceil(pieces);
            for chunk in answer.as_bytes().chunks(step) {
                s.write_all(chunk).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Keep the connection open: the JSON value ends the answer.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        path
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oomguard-usage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn client_reads_a_split_answer() {
        let dir = tmp("split");
        let path = server(&dir, ANSWER, 7).await;
        let c = ControlClient::new(path);
        assert_eq!(
            c.memory_usage(&["/B", "/"]).await.unwrap(),
            vec![2007040, 6021120]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn client_names_the_file_in_error() {
        let dir = tmp("err");
        let path = server(&dir, ANSWER_ERRORS, 1).await;
        let e = ControlClient::new(path)
            .memory_usage(&["/B", "/"])
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, UsageError::File { .. }), "{text}");
        assert!(
            text.contains("/B/memory.usage_in_bytes: no such file"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A socket path longer than sun_path (runsc falls back to such paths
    /// when its root is deep) is reached through /proc/self/fd.
    #[tokio::test]
    async fn client_reaches_a_long_socket_path() {
        let root = tmp("long");
        let mut dir = root.clone();
        while dir.as_os_str().len() < 120 {
            dir = dir.join("deeper-directory");
        }
        std::fs::create_dir_all(&dir).unwrap();
        // bind() cannot take the long path either: bind in a short
        // directory, then rename the socket into place.
        let short = tmp("long-bind");
        let bound = server(&short, ANSWER, 1).await;
        let path = dir.join("runsc-S.sock");
        std::fs::rename(&bound, &path).unwrap();
        assert!(path.as_os_str().len() >= SUN_PATH_MAX);
        let c = ControlClient::new(path);
        assert_eq!(
            c.memory_usage(&["/B", "/"]).await.unwrap(),
            vec![2007040, 6021120]
        );
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&short).unwrap();
    }

    #[tokio::test]
    async fn client_refuses_an_endless_answer() {
        let dir = tmp("endless");
        let path = dir.join("runsc-S.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(br#"{"success":true,"err":""#).await;
            let junk = vec![b' '; 8192];
            for _ in 0..20 {
                if s.write_all(&junk).await.is_err() {
                    break;
                }
            }
        });
        let e = ControlClient::new(path)
            .memory_usage(&["/"])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn client_reports_no_server() {
        let dir = tmp("none");
        let e = ControlClient::new(dir.join("runsc-S.sock"))
            .memory_usage(&["/"])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connect"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
