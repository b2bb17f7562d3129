//! gVisor under oomguard through ctr: the runsc builds Debian ships, the
//! TOML a runsc user points oomguard at, and `ctr run` of a sandbox.

use std::path::PathBuf;

use crate::harness::{repo, rootfs, Containerd, RUNTIME};

/// The Debian runsc builds: bookworm's (system) and trixie's (unpacked).
pub fn runsc_binary(build: &str) -> PathBuf {
    match build {
        "20221219" => PathBuf::from("/usr/bin/runsc"),
        _ => repo().join(".cache/runsc/20240729/bin/runsc"),
    }
}

/// The TOML a runsc user points oomguard at.
pub fn runsc_config(c: &Containerd, build: &str) -> String {
    let path = c.dir.join(format!("runsc-{build}.toml"));
    std::fs::write(
        &path,
        format!(
            "binary_name = \"{}\"\nroot = \"{}\"\n[runsc_config]\nplatform = \"ptrace\"\nnetwork = \"none\"\n",
            runsc_binary(build).display(),
            c.dir.join("runsc-root").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A private copy of the rootfs: gVisor keeps a filestore file in it, and
/// two containers of a pod cannot share one.
pub fn own_rootfs(c: &Containerd, name: &str) -> String {
    let dir = c.dir.join("rootfs").join(name);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    dir.display().to_string()
}

pub fn run_gvisor(
    c: &Containerd,
    cfg: &str,
    id: &str,
    opts: &[&str],
    cmd: &[&str],
    detach: bool,
) -> std::process::Output {
    let root = own_rootfs(c, id);
    let mut args = vec![
        "run",
        if detach { "-d" } else { "--rm" },
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        cfg,
    ];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--rootfs", &root, id]);
    args.extend_from_slice(cmd);
    c.ctr(&args)
}
