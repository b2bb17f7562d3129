//! The two streams the shim must copy itself: stdin (it ends on CloseIO) and
//! a terminal's master (one descriptor for both directions).

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use log::debug;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::console::Console;

const BUF: usize = 32 * 1024;

enum Sink {
    Pipe(pipe::Sender),
    File(std::fs::File),
    Console(Console),
    Discard,
}

impl Sink {
    fn for_output(fd: Option<OwnedFd>) -> io::Result<Sink> {
        let Some(fd) = fd else {
            return Ok(Sink::Discard);
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
        if stat.st_mode & libc::S_IFMT == libc::S_IFIFO {
            Ok(Sink::Pipe(pipe::Sender::from_owned_fd(fd)?))
        } else {
            Ok(Sink::File(std::fs::File::from(fd)))
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Pipe(p) => p.write_all(buf).await,
            Sink::File(f) => f.write_all(buf),
            Sink::Console(c) => write_console(c, buf).await,
            Sink::Discard => Ok(()),
        }
    }
}

async fn write_console(console: &Console, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut guard = console.master().writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from)) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Copies `src` into `sink` until EOF, or until `close` fires, after which
/// what is already buffered is flushed and the copy ends.
async fn copy_until_close(
    mut src: pipe::Receiver,
    mut sink: Sink,
    mut close: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; BUF];
    loop {
        tokio::select! {
            n = src.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if sink.write_all(&buf[..n]).await.is_err() { break },
            },
            _ = &mut close => {
                while let Ok(n) = src.try_read(&mut buf) {
                    if n == 0 || sink.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    debug!("stdio: stdin copy ended");
}

/// Stdin FIFO → a pipe whose read end (returned) becomes the process's stdin.
pub fn stdin_to_pipe(fifo: &Path, close: oneshot::Receiver<()>) -> io::Result<OwnedFd> {
    let src = open_stdin(fifo)?;
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let sink = Sink::Pipe(pipe::Sender::from_owned_fd(write)?);
    tokio::spawn(copy_until_close(src, sink, close));
    Ok(read)
}

pub fn stdin_to_console(
    fifo: &Path,
    console: Console,
    close: oneshot::Receiver<()>,
) -> io::Result<()> {
    let src = open_stdin(fifo)?;
    tokio::spawn(copy_until_close(src, Sink::Console(console), close));
    Ok(())
}

/// Opened non-blocking: the client may open its end later. Until a writer
/// has connected, epoll reports nothing, so the copy waits for it.
fn open_stdin(fifo: &Path) -> io::Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(fifo)
        .map_err(|e| io::Error::new(e.kind(), format!("open stdin {}: {e}", fifo.display())))
}

/// Terminal master → stdout, until the last slave closes (EIO).
pub fn console_to_output(
    console: Console,
    out: Option<OwnedFd>,
    done: oneshot::Sender<()>,
) -> io::Result<()> {
    let mut sink = Sink::for_output(out)?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; BUF];
        loop {
            let Ok(mut guard) = console.master().readable().await else {
                break;
            };
            let n = match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(io::Error::from))
            {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_would_block) => continue,
            };
            if sink.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        debug!("stdio: terminal output ended");
        let _ = done.send(());
    });
    Ok(())
}
