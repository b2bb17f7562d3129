//! A tokio listener for gVisor's remote monitoring sink.
//!
//! ```ignore
//! let listener = TraceListener::bind("/run/oomguard/t/abcd.sock")?;
//! // write trace::pod_init_config(listener.path_str()?, 3, false) to a file,
//! // then start `runsc --pod-init-config=FILE create ...` *while* accepting:
//! // runsc create connects and blocks until the handshake is answered.
//! let mut stream = listener.accept().await?;
//! stream.handshake().await?;
//! while let Some(msg) = stream.recv().await.or_else(skip_bad_packets)? { ... }
//! // Ok(None): EOF, the sandbox is gone (exited, or killed: OOM).
//! ```
//!
//! One connection per sandbox: `runsc create` of the sandbox (root container)
//! connects; containers joining the sandbox later do not (their points come
//! through the same connection). The socket path must fit `sun_path` (107
//! bytes): containerd's task directories are often longer.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::trace::{
    decode_handshake, encode_handshake, parse_message_limited, Message, ParseError,
    MAX_HANDSHAKE_SIZE, MAX_MESSAGE_SIZE, MIN_SENTRY_VERSION, WIRE_VERSION,
};

/// Errors of the trace stream. Only [`TraceError::BadPacket`] leaves the
/// stream usable (see [`TraceError::is_fatal`]).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace socket: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("trace stream closed before the handshake")]
    ClosedBeforeHandshake,
    #[error("trace handshake: {0}")]
    Handshake(#[source] ParseError),
    #[error("sentry speaks trace protocol version {version}; the minimum is {min}")]
    UnsupportedVersion { version: u32, min: u32 },
    /// One packet was malformed or too large; it was consumed and the next
    /// `recv` goes on with the following one.
    #[error("bad trace packet: {0}")]
    BadPacket(#[source] ParseError),
}

impl TraceError {
    /// Whether the stream must be abandoned.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TraceError::BadPacket(_))
    }
}

/// Registers an owned descriptor with the current runtime's reactor (an error,
/// not tokio's panic, outside a runtime).
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("not inside a tokio runtime"));
    }
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and
    // the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> TraceError {
    move |source| TraceError::Io { what, source }
}

/// Credentials of the connected peer (`SO_PEERCRED`, taken at connect time):
/// for a real sandbox this is the `runsc create` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A bound, listening `SOCK_SEQPACKET` socket at a path. Dropping it removes
/// the socket file (if it is still the one it bound).
#[derive(Debug)]
pub struct TraceListener {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    /// (dev, ino) of the socket file it created.
    ident: (u64, u64),
    max_message: usize,
}

impl TraceListener {
    /// Binds and listens at `path` (mode 0600). A stale socket file at `path`
    /// is replaced; any other file there is an error. Must be called inside a
    /// tokio runtime with IO enabled.
    pub fn bind(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(with_path(io::Error::from(io::ErrorKind::AlreadyExists)));
            }
            std::fs::remove_file(&path).map_err(with_path)?;
        }
        let addr = UnixAddr::new(path.as_path()).map_err(|e| with_path(e.into()))?;
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| with_path(e.into()))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| with_path(e.into()))?;
        let setup = || -> io::Result<(u64, u64)> {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            let backlog = Backlog::new(4).map_err(io::Error::from)?;
            socket::listen(&fd, backlog).map_err(io::Error::from)?;
            let meta = std::fs::symlink_metadata(&path)?;
            Ok((meta.dev(), meta.ino()))
        };
        let ident = match setup() {
            Ok(ident) => ident,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(with_path(e));
            }
        };
        let fd = match register(fd, Interest::READABLE) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(with_path(e));
            }
        };
        Ok(TraceListener {
            fd,
            path,
            ident,
            max_message: MAX_MESSAGE_SIZE,
        })
    }

    /// Largest packet accepted by streams accepted from now on.
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max.max(super::trace::HEADER_STRUCT_SIZE);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as the `endpoint` string of the sink configuration.
    pub fn path_str(&self) -> io::Result<&str> {
        self.path.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "trace socket path is not UTF-8",
            )
        })
    }

    /// Waits for the next connection (no handshake yet).
    pub async fn accept(&self) -> io::Result<TraceStream> {
        loop {
            let mut guard = self.fd.readable().await?;
            let accepted = guard.try_io(|fd| {
                socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            match accepted {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    let mut stream = TraceStream::from_fd(owned)?;
                    stream.max_message = self.max_message;
                    return Ok(stream);
                }
                Ok(Err(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO)
                    ) =>
                {
                    continue
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Accepts one connection and answers its handshake.
    pub async fn accept_handshaken(&self) -> Result<TraceStream, TraceError> {
        let mut stream = self.accept().await.map_err(io_err("accept"))?;
        stream.handshake().await?;
        Ok(stream)
    }
}

impl Drop for TraceListener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

enum Packet {
    Eof,
    Data(usize),
    /// A packet larger than the buffer (its real length); it was consumed.
    Truncated(usize),
}

/// One accepted connection from the sentry.
#[derive(Debug)]
pub struct TraceStream {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
    max_message: usize,
    sentry_version: Option<u32>,
}

impl TraceStream {
    /// Wraps a connected `SOCK_SEQPACKET` descriptor (made non-blocking here).
    /// Must be called inside a tokio runtime with IO enabled.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(TraceStream {
            fd: register(fd, Interest::READABLE | Interest::WRITABLE)?,
            buf: Vec::new(),
            max_message: MAX_MESSAGE_SIZE,
            sentry_version: None,
        })
    }

    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max.max(super::trace::HEADER_STRUCT_SIZE);
    }

    /// The version the sentry announced, once the handshake is done.
    pub fn sentry_version(&self) -> Option<u32> {
        self.sentry_version
    }

    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        let c = socket::getsockopt(self.fd.get_ref(), sockopt::PeerCredentials)?;
        Ok(PeerCredentials {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
    }

    /// Reads the sentry's `Handshake` and answers with ours
    /// ([`WIRE_VERSION`]). On error, drop the stream: closing it makes
    /// `runsc create` fail (unless the sink has `ignore_setup_error`).
    pub async fn handshake(&mut self) -> Result<u32, TraceError> {
        if let Some(v) = self.sentry_version {
            return Ok(v);
        }
        let n = match self
            .recv_packet(MAX_HANDSHAKE_SIZE)
            .await
            .map_err(io_err("receiving the handshake"))?
        {
            Packet::Eof => return Err(TraceError::ClosedBeforeHandshake),
            Packet::Truncated(len) => {
                return Err(TraceError::Handshake(ParseError::Oversized {
                    len,
                    max: MAX_HANDSHAKE_SIZE,
                }))
            }
            Packet::Data(n) => n,
        };
        let version = decode_handshake(self.buf.get(..n).unwrap_or_default())
            .map_err(TraceError::Handshake)?;
        if version < MIN_SENTRY_VERSION {
            return Err(TraceError::UnsupportedVersion {
                version,
                min: MIN_SENTRY_VERSION,
            });
        }
        self.send(&encode_handshake(WIRE_VERSION))
            .await
            .map_err(io_err("sending the handshake"))?;
        self.sentry_version = Some(version);
        Ok(version)
    }

    /// The next point; `Ok(None)` at EOF (every holder of the sentry's end
    /// is gone: the sandbox exited or was killed). Does the handshake first
    /// if it has not been done. A [`TraceError::BadPacket`] is for one packet
    /// only: call `recv` again.
    pub async fn recv(&mut self) -> Result<Option<Message>, TraceError> {
        self.handshake().await?;
        let max = self.max_message;
        match self.recv_packet(max).await.map_err(io_err("receiving"))? {
            Packet::Eof => Ok(None),
            Packet::Truncated(len) => {
                Err(TraceError::BadPacket(ParseError::Oversized { len, max }))
            }
            Packet::Data(n) => parse_message_limited(self.buf.get(..n).unwrap_or_default(), max)
                .map(Some)
                .map_err(TraceError::BadPacket),
        }
    }

    async fn recv_packet(&mut self, limit: usize) -> io::Result<Packet> {
        if self.buf.len() < limit {
            self.buf.resize(limit, 0);
        }
        let TraceStream { fd, buf, .. } = self;
        let buf = &mut buf[..limit];
        loop {
            let mut guard = fd.readable().await?;
            let got = guard.try_io(|fd| {
                let mut iov = [IoSliceMut::new(&mut buf[..])];
                // MSG_TRUNC: for AF_UNIX datagram/seqpacket sockets, return
                // the packet's real length even when it did not fit.
                let msg = socket::recvmsg::<()>(
                    fd.as_raw_fd(),
                    &mut iov,
                    None,
                    MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                Ok((msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC)))
            });
            match got {
                Ok(Ok((len, truncated))) => {
                    return Ok(if truncated || len > limit {
                        Packet::Truncated(len)
                    } else if len == 0 {
                        Packet::Eof
                    } else {
                        Packet::Data(len)
                    })
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(Packet::Eof),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    async fn send(&self, data: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                socket::send(fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            });
            match sent {
                Ok(Ok(n)) if n == data.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short send: {n} of {} bytes", data.len()),
                    ))
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gvisor::trace::{Event, TaskExit};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn scratch_path(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir().join(format!(
            "gvtrace-{}-{}-{tag}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A blocking client standing in for runsc: connect, send `handshake`,
    /// read the answer, send `packets`, close. Returns the answer.
    fn fake_sentry(
        path: PathBuf,
        handshake: Vec<u8>,
        packets: Vec<Vec<u8>>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            socket::connect(fd.as_raw_fd(), &UnixAddr::new(path.as_path()).unwrap()).unwrap();
            socket::send(fd.as_raw_fd(), &handshake, MsgFlags::empty()).unwrap();
            let mut answer = vec![0u8; 1024];
            let n = socket::recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty()).unwrap();
            answer.truncate(n);
            if !answer.is_empty() {
                for p in packets {
                    socket::send(fd.as_raw_fd(), &p, MsgFlags::empty()).unwrap();
                }
            }
            answer
        })
    }

    #[tokio::test]
    async fn real_stream_through_socket() {
        let path = scratch_path("ok");
        let listener = TraceListener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let client = fake_sentry(
            path.clone(),
            hex("0801"),
            vec![
                // 20221219: start of c1, dd exits, init exits 3 (then EOF).
                hex("08000100000000000a16089adace84d7d993f51810012001320263314a027368120263311a012f22072f62696e2f736822022d63224464642069663d2f6465762f7a65726f206f663d2f6465762f6e756c6c2062733d314d20636f756e743d313b20736c65657020302e32202620776169743b20657869742033"),
                hex("08000500000000000a1608ffe6d28bd7d993f51810022002320263314a026464"),
                hex("08000500000000000a1608f1afb2f1d7d993f51810012001320263314a027368108006"),
            ],
        );
        let mut stream = listener.accept().await.unwrap();
        assert_eq!(
            stream.peer_credentials().unwrap().pid,
            std::process::id() as i32
        );
        assert_eq!(stream.handshake().await.unwrap(), 1);
        assert_eq!(stream.sentry_version(), Some(1));
        let mut events = Vec::new();
        while let Some(m) = stream.recv().await.unwrap() {
            events.push(m.event);
        }
        assert_eq!(client.join().unwrap(), hex("0801"));
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].container_id(), Some("c1"));
        let Event::TaskExit(TaskExit {
            exit_status,
            context: Some(ctx),
        }) = &events[2]
        else {
            panic!("{events:?}")
        };
        assert_eq!((*exit_status, ctx.thread_id), (768, 1));
        drop(listener);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[tokio::test]
    async fn recv_does_the_handshake_and_survives_bad_packets() {
        let path = scratch_path("bad");
        let mut listener = TraceListener::bind(&path).unwrap();
        listener.set_max_message(64);
        let client = fake_sentry(
            path.clone(),
            hex("0802"), // a newer sentry is accepted
            vec![
                vec![0x08, 0x00, 0x05, 0x00, 0, 0, 0, 0, 0x10], // truncated varint
                vec![0u8; 100],                                 // over the 64-byte limit
                vec![1, 2, 3],                                  // short header
                hex("0800050001000000108006"),                  // good, dropped_count 1
            ],
        );
        let mut stream = listener.accept().await.unwrap();
        let mut bad = Vec::new();
        let mut good = Vec::new();
        loop {
            match stream.recv().await {
                Ok(Some(m)) => good.push(m),
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.is_fatal(), "{e}");
                    bad.push(e.to_string());
                }
            }
        }
        assert_eq!(stream.sentry_version(), Some(2));
        assert_eq!(client.join().unwrap(), hex("0801"));
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(
            bad[1].contains("100 bytes exceeds the 64-byte limit"),
            "{bad:?}"
        );
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].dropped_count(), 1);
        assert_eq!(good[0].event.exit_status().unwrap().exit_code(), Some(3));
    }

    #[tokio::test]
    async fn handshake_refusals() {
        // Version 0 is refused; the client then sees EOF (empty answer).
        let path = scratch_path("v0");
        let listener = TraceListener::bind(&path).unwrap();
        let client = fake_sentry(path.clone(), hex("0800"), vec![]);
        let err = listener.accept_handshaken().await.unwrap_err();
        assert!(
            matches!(err, TraceError::UnsupportedVersion { version: 0, min: 1 }),
            "{err}"
        );
        assert!(err.is_fatal());
        assert_eq!(client.join().unwrap(), Vec::<u8>::new());

        let client = fake_sentry(path.clone(), hex("ffffffff"), vec![]);
        let err = listener.accept_handshaken().await.unwrap_err();
        assert!(matches!(err, TraceError::Handshake(_)), "{err}");
        assert_eq!(client.join().unwrap(), Vec::<u8>::new());
    }

    #[tokio::test]
    async fn bind_replaces_stale_socket_only() {
        let path = scratch_path("stale");
        // A leftover socket file (std does not unlink on drop).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = TraceListener::bind(&path).unwrap();
        drop(listener);
        assert!(!path.exists());

        std::fs::write(&path, b"not a socket").unwrap();
        let err = TraceListener::bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_file(&path).unwrap();

        let long = std::env::temp_dir().join("x".repeat(120));
        assert!(TraceListener::bind(&long).is_err());
    }
}
