//! A process's standard streams as containerd names them: FIFO paths,
//! `file://` and `binary://` log URIs, or a terminal.
//!
//! Output goes straight from the container to its destination: an output
//! FIFO or log file is opened here and handed to the runtime as the process's
//! own stdout/stderr, so no byte passes through the shim and nothing is left
//! to flush when the process dies. Only stdin (which must end on CloseIO) and
//! terminals (one master for both directions) are copied by the shim.

mod binary;
pub mod console;
mod copy;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use oomguard_runtimes::ProcessStdio;
use tokio::sync::oneshot;

pub use console::{Console, ConsoleSocket};

/// What containerd asked for, as it appears in Create/Exec.
#[derive(Debug, Clone, Default)]
pub struct StdioSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Where one output stream goes.
#[derive(Debug, PartialEq)]
enum Destination<'a> {
    Null,
    Fifo(&'a Path),
    File(&'a Path),
    Binary(&'a str),
}

fn destination(uri: &str) -> io::Result<Destination<'_>> {
    if uri.is_empty() {
        return Ok(Destination::Null);
    }
    match uri.split_once("://") {
        None => Ok(Destination::Fifo(Path::new(uri))),
        Some(("fifo", path)) => Ok(Destination::Fifo(Path::new(path))),
        Some(("file", path)) => Ok(Destination::File(Path::new(path))),
        Some(("binary", _)) => Ok(Destination::Binary(uri)),
        Some((scheme, _)) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported stdio URI scheme {scheme:?} in {uri:?}"),
        )),
    }
}

/// The shim's side of a process's streams, kept until the process is gone.
#[derive(Default)]
pub struct IoHandles {
    /// Ends the stdin copy (CloseIO): remaining input is flushed, then the
    /// process sees EOF.
    stdin_close: Option<oneshot::Sender<()>>,
    /// Resolves when everything the process wrote to its terminal reached
    /// stdout; the exit is published after that.
    output_done: Option<oneshot::Receiver<()>>,
    pub console: Option<Console>,
    /// The process's stderr destination, kept for oomguard's own line
    /// (`oom_report = "stderr"`); given up at the exit.
    pub stderr_report: Option<std::fs::File>,
}

impl IoHandles {
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded) until copied output has drained.
    pub async fn drain(&mut self) {
        if let Some(rx) = self.output_done.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rx).await;
        }
    }
}

/// An output FIFO opened read-write: opening never blocks on a missing
/// reader, and a reader that goes away makes writes block, not fail, as
/// with the stock shim.
fn open_fifo_rw(path: &Path) -> io::Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    Ok(f.into())
}

fn open_log_file(path: &Path) -> io::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    Ok(f.into())
}

/// Opens a non-terminal process's streams. `namespace`/`id` are handed to a
/// `binary://` logger. `keep_stderr` keeps a descriptor on the stderr
/// destination for the shim's own line.
pub async fn open(
    spec: &StdioSpec,
    namespace: &str,
    id: &str,
    keep_stderr: bool,
) -> io::Result<(ProcessStdio, IoHandles)> {
    let (stdio, mut handles) = open_streams(spec, namespace, id).await?;
    if keep_stderr {
        handles.stderr_report = match &stdio.stderr {
            Some(fd) => Some(std::fs::File::from(fd.try_clone()?)),
            None => None,
        };
    }
    Ok((stdio, handles))
}

async fn open_streams(
    spec: &StdioSpec,
    namespace: &str,
    id: &str,
) -> io::Result<(ProcessStdio, IoHandles)> {
    let mut stdio = ProcessStdio::default();
    let mut handles = IoHandles::default();

    if !spec.stdin.is_empty() {
        let (close_tx, close_rx) = oneshot::channel();
        stdio.stdin = Some(copy::stdin_to_pipe(Path::new(&spec.stdin), close_rx)?);
        handles.stdin_close = Some(close_tx);
    }

    let out = destination(&spec.stdout)?;
    let err = destination(&spec.stderr)?;
    if let Destination::Binary(uri) = out {
        let (o, e) = binary::start_logger(uri, namespace, id).await?;
        stdio.stdout = Some(o);
        stdio.stderr = Some(e);
        return Ok((stdio, handles));
    }
    stdio.stdout = open_output(&out)?;
    stdio.stderr = if err == out && err != Destination::Null {
        // One file for both (file:// logs): share the descriptor.
        match &stdio.stdout {
            Some(fd) => Some(fd.try_clone()?),
            None => None,
        }
    } else {
        open_output(&err)?
    };
    Ok((stdio, handles))
}

fn open_output(dest: &Destination<'_>) -> io::Result<Option<OwnedFd>> {
    match dest {
        Destination::Null => Ok(None),
        Destination::Fifo(p) => open_fifo_rw(p).map(Some),
        Destination::File(p) => open_log_file(p).map(Some),
        Destination::Binary(uri) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{uri}: a binary logger takes stdout and stderr together"),
        )),
    }
}

/// Wires a terminal's master to the process's stdin FIFO and stdout.
pub fn attach_console(spec: &StdioSpec, console: Console) -> io::Result<IoHandles> {
    let mut handles = IoHandles::default();
    if !spec.stdin.is_empty() {
        let (close_tx, close_rx) = oneshot::channel();
        copy::stdin_to_console(Path::new(&spec.stdin), console.clone(), close_rx)?;
        handles.stdin_close = Some(close_tx);
    }
    let out = match destination(&spec.stdout)? {
        Destination::Null => None,
        Destination::Fifo(p) => Some(open_fifo_rw(p)?),
        Destination::File(p) => Some(open_log_file(p)?),
        Destination::Binary(uri) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{uri}: a terminal cannot feed a binary logger"),
            ))
        }
    };
    let (done_tx, done_rx) = oneshot::channel();
    copy::console_to_output(console.clone(), out, done_tx)?;
    handles.output_done = Some(done_rx);
    handles.console = Some(console);
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_as_containerd_sends_them() {
        assert_eq!(destination("").unwrap(), Destination::Null);
        assert_eq!(
            destination("/run/containerd/fifo/1/t-stdout").unwrap(),
            Destination::Fifo(Path::new("/run/containerd/fifo/1/t-stdout"))
        );
        assert_eq!(
            destination("file:///var/log/c.log").unwrap(),
            Destination::File(Path::new("/var/log/c.log"))
        );
        assert_eq!(
            destination("binary:///usr/bin/logger?a=b").unwrap(),
            Destination::Binary("binary:///usr/bin/logger?a=b")
        );
        let err = destination("tcp://1.2.3.4:5").unwrap_err();
        assert!(err.to_string().contains("\"tcp\""), "{err}");
    }
}
