//! `binary://` logging: containerd's protocol for a logging program that
//! receives the container's stdout on fd 3 and stderr on fd 4, and closes
//! fd 5 once it is ready.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use log::{info, warn};
use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use oomguard_runtimes::reaper::reaper;

/// Splits `binary:///path?k=v&flag` into the program and its arguments, as
/// the stock shim does: each query key, followed by its value if any.
pub fn parse_uri(uri: &str) -> io::Result<(String, Vec<String>)> {
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| bad(uri, "not a binary:// URI"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(bad(uri, "no program path"));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(unescape(k));
        if !v.is_empty() {
            args.push(unescape(v));
        }
    }
    Ok((unescape(path), args))
}

fn bad(uri: &str, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {why}"))
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Starts the logger and returns the write ends for the container's stdout
/// and stderr once the logger said it is ready.
pub async fn start_logger(uri: &str, namespace: &str, id: &str) -> io::Result<(OwnedFd, OwnedFd)> {
    let (program, args) = parse_uri(uri)?;
    let cloexec = OFlag::O_CLOEXEC;
    let (out_r, out_w) = pipe2(cloexec).map_err(io::Error::from)?;
    let (err_r, err_w) = pipe2(cloexec).map_err(io::Error::from)?;
    let (ready_r, ready_w) = pipe2(cloexec).map_err(io::Error::from)?;

    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    oomguard_runtimes::reaper::reset_child_nice(&mut cmd);
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            // Move the sources above 5 first so no dup2 clobbers another.
            let mut high = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD, 10);
                if high[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (child, _exit) = reaper()
        .spawn(&mut cmd)
        .map_err(|e| io::Error::new(e.kind(), format!("start logger {program}: {e}")))?;
    drop((out_r, err_r, ready_w));
    drop(cmd);
    info!("stdio: logger started program={program} pid={}", child.id());

    // The logger closes fd 5 when it is ready (or dies); either ends the read.
    let mut ready = pipe::Receiver::from_owned_fd(ready_r)?;
    let mut sink = Vec::new();
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ready.read_to_end(&mut sink),
    )
    .await
    {
        Ok(_) => {}
        Err(_) => warn!("stdio: logger {program} did not signal readiness within 10s"),
    }
    Ok((out_w, err_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_uris() {
        let (p, a) = parse_uri("binary:///usr/bin/log-driver?id=abc&debug").unwrap();
        assert_eq!(p, "/usr/bin/log-driver");
        assert_eq!(a, vec!["id", "abc", "debug"]);
        let (p, a) = parse_uri("binary:///opt/my%20logger").unwrap();
        assert_eq!(p, "/opt/my logger");
        assert!(a.is_empty());
        assert!(parse_uri("binary://").is_err());
        assert!(parse_uri("file:///x").is_err());
    }
}
