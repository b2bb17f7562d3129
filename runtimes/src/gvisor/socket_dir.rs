//! Where a sandbox's monitoring socket lives: a private directory (0700,
//! owned by the shim's user) in the sandbox container's bundle, so it is
//! the shim's own state, unreachable for other users, found by `delete`
//! after a crash, and removed with the bundle at the latest.
//!
//! `sun_path` holds 107 bytes; containerd's bundles are often longer
//! (`/run/containerd/io.containerd.runtime.v2.task/k8s.io/<64 hex>` alone
//! is 117). The endpoint handed to runsc is then
//! `/proc/<shim pid>/fd/<dir fd>/trace.sock`: the kernel resolves the
//! directory through the shim's open descriptor, whatever its length.
//! Measured with runsc 20221219 and 20240729: the process that connects is
//! `runsc create` (a child of the shim, root, any cwd), and both a relative
//! endpoint (against its cwd) and the `/proc/PID/fd` form work; the relative
//! form would tie the endpoint to runsc's cwd, this one does not.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

/// The directory's name in the bundle.
pub const DIR_NAME: &str = "gvisor-monitor";
/// The listening socket in it.
pub const SOCKET_NAME: &str = "trace.sock";
/// The `--pod-init-config` file runsc reads.
pub const CONFIG_NAME: &str = "pod-init.json";

/// The longest path `sun_path` takes (108 bytes with the NUL).
pub const SUN_PATH_MAX: usize = 107;

/// The private directory of one sandbox's monitoring socket.
#[derive(Debug)]
pub struct SocketDir {
    path: PathBuf,
    /// Held open for the `/proc/PID/fd/N` endpoint; also pins the directory.
    fd: OwnedFd,
}

impl SocketDir {
    /// Creates `bundle/gvisor-monitor` with mode 0700. A leftover of an
    /// earlier shim of this bundle is removed first, but only if it is a
    /// real directory (never a symlink) owned by this user; `mkdir` then
    /// fails rather than reuse anything that appeared in between.
    pub fn create(bundle: &Path) -> io::Result<SocketDir> {
        let path = bundle.join(DIR_NAME);
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let uid = nix::unistd::geteuid().as_raw();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_dir() && meta.uid() == uid => {
                remove(bundle).map_err(named)?
            }
            Ok(_) => {
                return Err(named(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not this user's directory; refusing to use it",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(named(e)),
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(named)?;
        let fd = open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| named(e.into()))?;
        // The umask may have narrowed it; nothing may have widened it.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700))
            .map_err(|e| named(e.into()))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| named(e.into()))?;
        if st.st_uid != uid {
            return Err(named(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("owned by uid {}, not {uid}", st.st_uid),
            )));
        }
        Ok(SocketDir { path, fd })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_NAME)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path.join(SOCKET_NAME)
    }

    /// The path to bind and to give runsc as the sink's `endpoint`: the
    /// socket's own path when it fits `sun_path`, else the same file
    /// reached through this process's descriptor of the directory.
    pub fn endpoint(&self) -> PathBuf {
        endpoint_for(&self.path, std::process::id(), self.fd.as_raw_fd())
    }

    /// Removes the socket, the config and the directory.
    pub fn remove(self) -> io::Result<()> {
        let bundle = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        drop(self.fd);
        remove(&bundle)
    }
}

/// The endpoint for a socket in `dir`, given the pid and the descriptor
/// number through which `dir` is open.
pub fn endpoint_for(dir: &Path, pid: u32, fd: i32) -> PathBuf {
    let direct = dir.join(SOCKET_NAME);
    if direct.as_os_str().len() <= SUN_PATH_MAX {
        direct
    } else {
        PathBuf::from(format!("/proc/{pid}/fd/{fd}/{SOCKET_NAME}"))
    }
}

/// Removes `bundle/gvisor-monitor` and what it holds (`delete` after a dead
/// shim, and the shim itself when the sandbox goes). Nothing there is fine;
/// a symlink is removed, never followed.
pub fn remove(bundle: &Path) -> io::Result<()> {
    let path = bundle.join(DIR_NAME);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.file_type().is_dir() => match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Ok(_) => std::fs::remove_file(&path),
    }
}

/// The mode bits of the directory (for tests and logs).
pub fn mode(dir: &Path) -> io::Result<u32> {
    Ok(std::fs::symlink_metadata(dir)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("og-sockdir-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn private_dir_in_the_bundle() {
        let bundle = scratch("plain");
        let dir = SocketDir::create(&bundle).unwrap();
        assert_eq!(dir.path(), bundle.join(DIR_NAME));
        assert_eq!(mode(dir.path()).unwrap(), 0o700);
        assert_eq!(dir.endpoint(), bundle.join(DIR_NAME).join(SOCKET_NAME));
        std::fs::write(dir.config_path(), b"{}").unwrap();
        // A second shim of the same bundle replaces the leftover.
        let again = SocketDir::create(&bundle).unwrap();
        assert!(!again.config_path().exists());
        again.remove().unwrap();
        assert!(!bundle.join(DIR_NAME).exists());
        remove(&bundle).unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
    }

    #[test]
    fn refuses_what_it_did_not_make() {
        let bundle = scratch("symlink");
        let target = bundle.join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, bundle.join(DIR_NAME)).unwrap();
        let err = SocketDir::create(&bundle).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(err.to_string().contains(DIR_NAME), "{err}");
        // delete removes the link, not what it points to.
        remove(&bundle).unwrap();
        assert!(target.exists());
        assert!(!bundle.join(DIR_NAME).exists());
        std::fs::remove_dir_all(&bundle).unwrap();
    }

    #[test]
    fn long_bundles_go_through_the_descriptor() {
        // containerd's CRI bundles: 117 bytes before the directory.
        let bundle = format!(
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/{}",
            "0123456789abcdef".repeat(4)
        );
        let ep = endpoint_for(&Path::new(&bundle).join(DIR_NAME), 4194304, 1023);
        assert_eq!(ep, PathBuf::from("/proc/4194304/fd/1023/trace.sock"));
        assert!(ep.as_os_str().len() <= SUN_PATH_MAX);
        // A real one, bound and connected through the descriptor.
        let base = scratch("long");
        let deep = base.join("d".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        let dir = SocketDir::create(&deep).unwrap();
        let ep = dir.endpoint();
        assert!(ep.starts_with("/proc/"), "{ep:?}");
        let listener = std::os::unix::net::UnixListener::bind(&ep).unwrap();
        assert!(dir.socket_path().exists(), "the socket is in the bundle");
        std::os::unix::net::UnixStream::connect(&ep).unwrap();
        drop(listener);
        dir.remove().unwrap();
        assert!(!deep.join(DIR_NAME).exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
