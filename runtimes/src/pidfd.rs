//! Waiting for processes the shim does not parent (a container's children,
//! reparented to another pid namespace's init) to end: a pidfd becomes
//! readable when its process exits, so no polling of /proc is needed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A pidfd for `pid`, or `None` when the process is already gone. While the
/// descriptor lives, `pid` cannot name another process: `/proc/PID` read
/// after this call is that process's.
pub fn open(pid: i32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1); the descriptor is owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::O_NONBLOCK) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Sends `signal` to the process of a pidfd. `Ok(false)`: it has exited.
pub fn send_signal(fd: &OwnedFd, signal: i32) -> io::Result<bool> {
    // SAFETY: a valid pidfd, no siginfo (the kernel fills it as for kill),
    // no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(e),
        };
    }
    Ok(true)
}

/// Waits until every process of `fds` has exited, for at most `timeout`;
/// returns how many still run then.
pub async fn wait_fds(fds: &[OwnedFd], timeout: Duration) -> io::Result<usize> {
    let mut watched = Vec::new();
    for fd in fds {
        let fd = fd.try_clone()?;
        // SAFETY: a duplicate owned here, registered once.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        watched.push(fd);
    }
    let all = async {
        for fd in &watched {
            // Readable once the process has exited; never cleared.
            let _ = fd.readable().await;
        }
    };
    if tokio::time::timeout(timeout, all).await.is_ok() {
        return Ok(0);
    }
    let mut left = 0;
    for fd in &watched {
        let ready = tokio::time::timeout(Duration::ZERO, fd.readable()).await;
        if !matches!(ready, Ok(Ok(_))) {
            left += 1;
        }
    }
    Ok(left)
}

/// Waits until every process in `pids` has exited (a zombie counts as
/// exited), for at most `timeout`. Returns the pids still running then.
pub async fn wait_exited(pids: &[i32], timeout: Duration) -> io::Result<Vec<i32>> {
    let mut watched = Vec::new();
    for &pid in pids {
        if let Some(fd) = open(pid)? {
            // SAFETY: the descriptor is owned here and registered once.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            watched.push((pid, fd));
        }
    }
    let all = async {
        for (_, fd) in &watched {
            // Readable once the process has exited; never cleared.
            let _ = fd.readable().await;
        }
    };
    if tokio::time::timeout(timeout, all).await.is_ok() {
        return Ok(Vec::new());
    }
    let mut left = Vec::new();
    for (pid, fd) in &watched {
        let ready = tokio::time::timeout(Duration::ZERO, fd.readable()).await;
        if !matches!(ready, Ok(Ok(_))) {
            left.push(*pid);
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[tokio::test]
    async fn a_killed_process_is_seen_exiting() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let left = wait_exited(&[pid], Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(left, vec![pid], "still running");
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Not reaped yet: a zombie has exited.
        let left = wait_exited(&[pid], Duration::from_secs(5)).await.unwrap();
        assert!(left.is_empty());
        child.wait().unwrap();
        // Reaped: gone.
        assert!(wait_exited(&[pid], Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty());
    }
}
