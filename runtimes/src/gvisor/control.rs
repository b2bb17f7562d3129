//! One connection to a gVisor sandbox's control server, kept open.
//!
//! A call on an open connection costs one round trip (0.1–0.3 ms measured
//! for Pause, Resume and a two-file read), where connecting first adds
//! about as much again. The server serves one connection's calls in order,
//! so the connection belongs to one caller at a time (`&mut self`).
//!
//! A read is retried once on a fresh connection when the kept one turns out
//! to be dead; Pause, Resume and Signal are never retried: the sandbox may
//! have acted on the first attempt, and a Pause or Resume counted twice
//! would leave the sandbox stopped or resume someone else's pause.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::urpc::{self, ControlFile, FileAnswer, Outcome, MAX_ANSWER};

/// `sun_path` is 108 bytes; longer socket paths are reached via an O_PATH
/// descriptor, as runsc itself does.
const SUN_PATH_MAX: usize = 108;

/// A read can wait behind a large allocation in the sentry (seen: 0.4 s
/// while a 300 MB read() committed its buffer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("sandbox control server at {socket}: {method}: {what}: {source}")]
    Io {
        what: &'static str,
        socket: String,
        method: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sandbox control server at {socket}: {method}: {message}")]
    Protocol {
        socket: String,
        method: &'static str,
        message: String,
    },
    #[error("sandbox control server at {socket}: {method}: no answer within {timeout:?}")]
    Timeout {
        socket: String,
        method: &'static str,
        timeout: Duration,
    },
    /// The server answered `success: false`.
    #[error("sandbox control server at {socket}: {method}: {message}")]
    Refused {
        socket: String,
        method: &'static str,
        message: String,
    },
}

impl ControlError {
    /// The connection was unusable (not the sandbox refusing a call).
    fn broken(&self) -> bool {
        matches!(
            self,
            ControlError::Io { .. } | ControlError::Protocol { .. }
        )
    }
}

#[derive(Debug)]
pub struct ControlConnection {
    socket: PathBuf,
    stream: Option<UnixStream>,
}

impl ControlConnection {
    /// Connects at the first call.
    pub fn new(socket: PathBuf) -> Self {
        ControlConnection {
            socket,
            stream: None,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn name(&self) -> String {
        self.socket.display().to_string()
    }

    async fn connect(&self, method: &'static str) -> Result<UnixStream, ControlError> {
        let io = |source| ControlError::Io {
            what: "connect",
            socket: self.name(),
            method,
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

    /// One request, one answer, on the kept connection (made if there is
    /// none). The connection is kept only after a complete answer: a broken
    /// one, or one whose answer is late, is closed (a late answer must not
    /// be read as the next call's).
    async fn call(
        &mut self,
        method: &'static str,
        request: &[u8],
        timeout: Option<Duration>,
    ) -> Result<serde_json::Value, ControlError> {
        let stream = match self.stream.take() {
            Some(s) => s,
            None => self.connect(method).await?,
        };
        let exchange = Self::exchange(self.name(), stream, method, request);
        let (stream, result) =
            match timeout {
                Some(t) => tokio::time::timeout(t, exchange).await.map_err(|_| {
                    ControlError::Timeout {
                        socket: self.name(),
                        method,
                        timeout: t,
                    }
                })??,
                None => exchange.await?,
            };
        self.stream = Some(stream);
        result
    }

    /// Writes the request and reads one answer. `Err`: the connection is
    /// unusable; `Ok((stream, Err))`: the server refused the call.
    async fn exchange(
        socket: String,
        mut stream: UnixStream,
        method: &'static str,
        request: &[u8],
    ) -> Result<(UnixStream, Result<serde_json::Value, ControlError>), ControlError> {
        let io = |what, source| ControlError::Io {
            what,
            socket: socket.clone(),
            method,
            source,
        };
        stream
            .write_all(request)
            .await
            .map_err(|e| io("write", e))?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| io("read", e))?;
            let protocol = |message| ControlError::Protocol {
                socket: socket.clone(),
                method,
                message,
            };
            if n == 0 {
                return Err(protocol(format!(
                    "closed after {} bytes of answer",
                    buf.len()
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_ANSWER {
                return Err(protocol(format!("answer longer than {MAX_ANSWER} bytes")));
            }
            match urpc::parse_answer(&buf).map_err(protocol)? {
                None => continue,
                Some(Outcome::Done(result)) => return Ok((stream, Ok(result))),
                Some(Outcome::Failed(message)) => {
                    let refused = ControlError::Refused {
                        socket: socket.clone(),
                        method,
                        message,
                    };
                    return Ok((stream, Err(refused)));
                }
            }
        }
    }

    /// Reads control files in one call; one answer per file, in order.
    /// Retried once on a new connection if the kept one was dead.
    pub async fn read_files(
        &mut self,
        files: &[ControlFile<'_>],
    ) -> Result<Vec<FileAnswer>, ControlError> {
        let request = urpc::read_request(files);
        let method = urpc::READ_CONTROL_FILES;
        let kept = self.stream.is_some();
        let result = match self.call(method, &request, Some(READ_TIMEOUT)).await {
            Err(e) if kept && e.broken() => self.call(method, &request, Some(READ_TIMEOUT)).await,
            other => other,
        }?;
        urpc::file_answers(result, files.len()).map_err(|message| ControlError::Protocol {
            socket: self.name(),
            method,
            message,
        })
    }

    /// Stops every task of the sandbox; returns once none runs (a task in a
    /// system call stops when the call is done, before it returns to the
    /// application). No timeout: an abandoned Pause would still take effect.
    pub async fn pause(&mut self) -> Result<(), ControlError> {
        self.call(urpc::PAUSE, &urpc::bare_request(urpc::PAUSE), None)
            .await
            .map(drop)
    }

    /// Ends one [`pause`](Self::pause).
    pub async fn resume(&mut self) -> Result<(), ControlError> {
        self.call(urpc::RESUME, &urpc::bare_request(urpc::RESUME), None)
            .await
            .map(drop)
    }

    /// `signo` to every process of container `cid` (`runsc kill --all`).
    pub async fn signal_all(&mut self, cid: &str, signo: i32) -> Result<(), ControlError> {
        self.call(
            urpc::SIGNAL,
            &urpc::signal_all_request(cid, signo),
            Some(READ_TIMEOUT),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    const ANSWER: &str = r#"{"success":true,"err":"","result":{"results":[{"value":"2007040","is_error":false},{"value":"6021120","is_error":false}]}}"#;
    const DONE: &str = r#"{"success":true,"err":"","result":{}}"#;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("oomguard-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn files() -> [ControlFile<'static>; 2] {
        [
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
        ]
    }

    /// A server that answers each request on a connection with the next of
    /// `answers` (split in `pieces` writes), and records the methods asked.
    async fn server(
        dir: &Path,
        answers: Vec<&'static str>,
        pieces: usize,
    ) -> (PathBuf, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let path = dir.join("runsc-S.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for answer in answers {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
                tx.send(req["method"].as_str().unwrap().to_string())
                    .unwrap();
                let step = answer.len().div_ceil(pieces);
                for chunk in answer.as_bytes().chunks(step) {
                    s.write_all(chunk).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        (path, rx)
    }

    /// Several calls on one connection, a split answer among them.
    #[tokio::test]
    async fn calls_share_one_connection() {
        let dir = tmp("share");
        let (path, mut methods) = server(&dir, vec![ANSWER, DONE, ANSWER, DONE], 7).await;
        let mut c = ControlConnection::new(path);
        let a = c.read_files(&files()).await.unwrap();
        assert_eq!(a, vec![Ok("2007040".into()), Ok("6021120".into())]);
        c.pause().await.unwrap();
        assert_eq!(c.read_files(&files()).await.unwrap().len(), 2);
        c.resume().await.unwrap();
        let mut seen = Vec::new();
        while let Ok(m) = methods.try_recv() {
            seen.push(m);
        }
        assert_eq!(
            seen,
            [
                urpc::READ_CONTROL_FILES,
                urpc::PAUSE,
                urpc::READ_CONTROL_FILES,
                urpc::RESUME
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A read on a connection the server closed is made again on a new
    /// one; a Pause is not (it may have taken effect).
    #[tokio::test]
    async fn reads_retry_on_a_new_connection_pauses_do_not() {
        let dir = tmp("retry");
        let path = dir.join("runsc-S.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                // Every connection answers one call, then closes.
                let _ = s.read(&mut buf).await.unwrap();
                let answer = if n == 0 || n == 1 { ANSWER } else { DONE };
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let mut c = ControlConnection::new(path);
        c.read_files(&files()).await.unwrap();
        // The kept connection is closed by now: the read goes again.
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.read_files(&files()).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = c.pause().await.unwrap_err();
        assert!(e.to_string().contains("containerManager.Pause"), "{e}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn refusals_name_the_method() {
        let dir = tmp("refused");
        let (path, _m) = server(
            &dir,
            vec![r#"{"success":false,"err":"container \"B\" not found","result":null}"#],
            1,
        )
        .await;
        let e = ControlConnection::new(path)
            .signal_all("B", 9)
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::Refused { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("containerManager.Signal: container \"B\" not found"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A socket path longer than sun_path (runsc falls back to such paths
    /// when its root is deep) is reached through /proc/self/fd.
    #[tokio::test]
    async fn reaches_a_long_socket_path() {
        let root = tmp("long");
        let mut dir = root.clone();
        while dir.as_os_str().len() < 120 {
            dir = dir.join("deeper-directory");
        }
        std::fs::create_dir_all(&dir).unwrap();
        // bind() cannot take the long path either: bind in a short
        // directory, then rename the socket into place.
        let short = tmp("long-bind");
        let (bound, _m) = server(&short, vec![ANSWER], 1).await;
        let path = dir.join("runsc-S.sock");
        std::fs::rename(&bound, &path).unwrap();
        assert!(path.as_os_str().len() >= SUN_PATH_MAX);
        let a = ControlConnection::new(path)
            .read_files(&files())
            .await
            .unwrap();
        assert_eq!(a.len(), 2);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&short).unwrap();
    }

    #[tokio::test]
    async fn refuses_an_endless_answer() {
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
        let e = ControlConnection::new(path)
            .read_files(&files())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn reports_no_server() {
        let dir = tmp("none");
        let e = ControlConnection::new(dir.join("runsc-S.sock"))
            .read_files(&files())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connect"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
