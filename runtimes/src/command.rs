//! Running a runtime binary to completion under the shim's reaper.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::reaper::{reaper, WaitStatus};

pub struct Output {
    pub status: WaitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What the child gets as its standard streams.
pub enum Streams {
    /// stdout and stderr are captured; stdin is /dev/null.
    Capture,
    /// The given descriptors (None = /dev/null) are handed over as they are:
    /// a runtime passes its own stdio to the container it starts, so nothing
    /// may be captured there or the capture never ends.
    Inherit {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// Spawns `cmd` through the reaper and waits for it and its captured output.
pub async fn run(mut cmd: Command, streams: Streams) -> io::Result<Output> {
    let capture = matches!(streams, Streams::Capture);
    match streams {
        Streams::Capture => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        Streams::Inherit {
            stdin,
            stdout,
            stderr,
        } => {
            cmd.stdin(stdio(stdin))
                .stdout(stdio(stdout))
                .stderr(stdio(stderr));
        }
    }
    // Spawning waits until the child has exec'd (Rust learns of a failed
    // exec through a pipe), and a child that must wait for a CPU held the
    // shim's one runtime thread for a quarter of a second on a busy host:
    // spawn on a blocking thread. The parent's copies of handed-over
    // descriptors close with `cmd` there, or a reader of the container's
    // stdout would never see EOF.
    let (mut child, exit) = tokio::task::spawn_blocking(move || {
        let spawned = reaper().spawn(&mut cmd);
        drop(cmd);
        spawned
    })
    .await
    .map_err(|e| io::Error::other(format!("spawn: {e}")))??;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if capture {
        let out = child.stdout.take().map(OwnedFd::from);
        let err = child.stderr.take().map(OwnedFd::from);
        let (a, b) = tokio::join!(read_all(out, &mut stdout), read_all(err, &mut stderr));
        a?;
        b?;
    }
    let exit = exit
        .await
        .map_err(|_| io::Error::other("reaper dropped the exit of a runtime command"))?;
    Ok(Output {
        status: exit.status,
        stdout,
        stderr,
    })
}

async fn read_all(fd: Option<OwnedFd>, buf: &mut Vec<u8>) -> io::Result<()> {
    let Some(fd) = fd else { return Ok(()) };
    let mut rx = pipe::Receiver::from_owned_fd(fd)?;
    rx.read_to_end(buf).await.map(|_| ())
}
