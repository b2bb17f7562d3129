//! `delete`: containerd's clean-up after a shim that died. The container's
//! runtime state and rootfs must go; the exit is reported as SIGKILL.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim::Flags;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::config::RuntimeConfig;
use crate::task::container::SAVED_CONFIG;

pub fn run(flags: &Flags) -> Result<(), String> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| format!("delete: current dir: {e}"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let config = match std::fs::read(bundle.join(SAVED_CONFIG)) {
        Ok(bytes) => serde_json::from_slice::<RuntimeConfig>(&bytes)
            .map_err(|e| format!("delete: {}: {e}", bundle.join(SAVED_CONFIG).display()))?,
        // Never created (start succeeded, Create did not): plain defaults.
        Err(_) => RuntimeConfig::default(),
    };
    let binary = PathBuf::from(&config.binary_name);
    let root = config
        .root
        .clone()
        .unwrap_or_else(|| oomguard_runtimes::default_root(&binary, &flags.namespace));
    let out = Command::new(&binary)
        .arg("--root")
        .arg(&root)
        .args(config.runtime_global_flags())
        .args(["delete", "--force", &flags.id])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let msg = String::from_utf8_lossy(&o.stderr);
            if !msg.contains("does not exist") && !msg.contains("not found") {
                eprintln!(
                    "delete {}: {} delete: {}",
                    flags.id,
                    binary.display(),
                    msg.trim()
                );
            }
        }
        Err(e) => eprintln!("delete {}: run {}: {e}", flags.id, binary.display()),
    }
    if let Err(e) = crate::rootfs::unmount(&bundle.join("rootfs")) {
        eprintln!("delete {}: {e}", flags.id);
    }
    remove_dead_socket(&bundle, &flags.id);
    // A gVisor sandbox's monitoring socket directory, left by the dead shim.
    if let Err(e) = oomguard_runtimes::gvisor::monitor::remove_leftovers(&bundle) {
        eprintln!("delete {}: monitoring socket directory: {e}", flags.id);
    }
    let mut resp = DeleteResponse::new();
    resp.exit_status = 128 + libc::SIGKILL as u32;
    resp.exited_at = MessageField::some(crate::events::now());
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| format!("delete: encode response: {e}"))?;
    let mut stdout = std::io::stdout();
    stdout
        .write_all(&bytes)
        .and_then(|_| stdout.flush())
        .map_err(|e| format!("delete: write response: {e}"))
}

/// The shim's socket, once no shim answers on it: a shim that was killed
/// (-9, the OOM killer) cannot remove its own, and containerd leaves it.
/// A shim still serving other containers of the pod keeps it.
fn remove_dead_socket(bundle: &Path, id: &str) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let address = address.trim();
    let path = address.strip_prefix("unix://").unwrap_or(address);
    match UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            if let Err(e) = std::fs::remove_file(path) {
                eprintln!("delete {id}: remove dead shim socket {path}: {e}");
            }
        }
        // Served (a live shim of the pod), or already gone.
        _ => {}
    }
}
