//! Terminals: the runtime creates the pty inside the container and sends its
//! master over a console socket (SCM_RIGHTS); the shim keeps the master.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixListener;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A listening socket the runtime connects to with `--console-socket`.
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> io::Result<Self> {
        // Bundles can be deeper than a socket path may be long (108 bytes).
        let dir = std::env::temp_dir().join(format!(
            "oomguard-pty-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("pty.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and takes the master it sends.
    pub async fn receive(&self) -> io::Result<Console> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || {
                recv_fd(stream.as_raw_fd())
            }) {
                Ok(fd) => return Console::new(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            fds.extend(received);
        }
    }
    let mut fds = fds.into_iter();
    let first = fds.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "console socket: message carried no file descriptor",
        )
    })?;
    // SAFETY: the kernel just installed these descriptors in this process.
    let master = unsafe { OwnedFd::from_raw_fd(first) };
    for extra in fds {
        drop(unsafe { OwnedFd::from_raw_fd(extra) });
    }
    Ok(master)
}

/// A pty master, shared by the copy tasks and ResizePty.
#[derive(Clone)]
pub struct Console {
    master: Arc<AsyncFd<OwnedFd>>,
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

impl Console {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags =
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: the master is owned here and lives as long as its AsyncFd;
        // no other registration of this descriptor exists.
        let master = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Console {
            master: Arc::new(master),
        })
    }

    pub fn master(&self) -> &AsyncFd<OwnedFd> {
        &self.master
    }

    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
        unsafe { set_window_size(self.master.as_raw_fd(), &ws) }
            .map(drop)
            .map_err(io::Error::from)
    }
}
