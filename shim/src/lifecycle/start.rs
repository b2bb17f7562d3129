//! `start`: find or spawn the shim that serves this container's group and
//! print its address for containerd.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use containerd_shim::Flags;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

use super::LISTENER_FD;
use crate::config::RuntimeConfig;

/// The id whose shim serves this container: its pod sandbox's (CRI
/// annotation `io.kubernetes.cri.sandbox-id`: containers of one Kubernetes
/// pod share a shim and, under gVisor, a sandbox), else its own.
pub fn grouping_id(spec_json: &[u8], id: &str) -> Result<String, String> {
    let role = oomguard_runtimes::spec::pod_role(spec_json)?;
    Ok(role.sandbox.unwrap_or_else(|| id.to_string()))
}

pub fn run(flags: &Flags) -> Result<(), String> {
    let mut options = Vec::new();
    // containerd writes the runtime options to stdin; they may be absent.
    let _ = std::io::stdin().read_to_end(&mut options);
    let bundle = std::env::current_dir().map_err(|e| format!("start: current dir: {e}"))?;
    let spec_path = bundle.join("config.json");
    let spec =
        std::fs::read(&spec_path).map_err(|e| format!("start: {}: {e}", spec_path.display()))?;
    let grouping = grouping_id(&spec, &flags.id)
        .map_err(|e| format!("start: {}: {e}", spec_path.display()))?;
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    let path = address
        .strip_prefix("unix://")
        .unwrap_or(&address)
        .to_string();

    let listener = match bind(Path::new(&path)) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                // The group's shim is up: this container joins it.
                return announce(&address);
            }
            std::fs::remove_file(&path)
                .map_err(|e| format!("start: remove stale socket {path}: {e}"))?;
            bind(Path::new(&path)).map_err(|e| format!("start: bind {path}: {e}"))?
        }
        Err(e) => return Err(format!("start: bind {path}: {e}")),
    };

    let exe = std::env::current_exe().map_err(|e| format!("start: own path: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &flags.namespace,
        "-id",
        &flags.id,
        "-address",
        &flags.address,
    ])
    .args(["-socket", &address])
    .current_dir(&bundle)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == LISTENER_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("start: spawn shim: {e}"))?;
    drop(listener);

    if let Ok(any) = Any::parse_from_bytes(&options) {
        if let Ok(config) = RuntimeConfig::from_any(Some(&any)) {
            if !config.shim_cgroup.is_empty() {
                if let Err(e) =
                    containerd_shim::cgroup::add_task_to_cgroup(&config.shim_cgroup, child.id())
                {
                    eprintln!(
                        "start: warning: cannot move shim into {}: {e}",
                        config.shim_cgroup
                    );
                }
            }
        }
    }
    // The shim should die before containerd under memory pressure; where
    // the score cannot be changed (no CAP_SYS_RESOURCE) that is only a warning.
    if let Err(e) = containerd_shim::cgroup::adjust_oom_score(child.id()) {
        eprintln!("start: warning: cannot adjust the shim's oom_score_adj: {e}");
    }
    announce(&address)
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    UnixListener::bind(path)
}

/// Records the address in the bundle and prints it (task API v2: bare).
fn announce(address: &str) -> Result<(), String> {
    std::fs::write("address", address).map_err(|e| format!("start: write address file: {e}"))?;
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("start: write address: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_share_the_sandbox_shim() {
        let spec = br#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"abc123"}}"#;
        assert_eq!(grouping_id(spec, "c1").unwrap(), "abc123");
        assert_eq!(
            grouping_id(br#"{"ociVersion":"1.1.0"}"#, "c1").unwrap(),
            "c1"
        );
        let err = grouping_id(b"not json", "c1").unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }
}
