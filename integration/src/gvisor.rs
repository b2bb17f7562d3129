//! gVisor under oomguard through ctr: the runsc builds Debian ships, the
//! TOML a runsc user points oomguard at, and `ctr run` of a sandbox.

use std::path::{Path, PathBuf};

use crate::harness::{repo, rootfs, shim_dir, Containerd, RUNTIME};

/// The Debian runsc builds: bookworm's (system) and trixie's (unpacked).
pub fn runsc_binary(build: &str) -> PathBuf {
    match build {
        "20221219" => PathBuf::from("/usr/bin/runsc"),
        _ => repo().join(".cache/runsc/20240729/bin/runsc"),
    }
}

/// The runsc.toml `install` writes on this machine (the shim's own check
/// of what the runsc found can do: gVisor's defaults, with network =
/// "host" where this kernel needs it), for `binary` found as BUILD's runsc,
/// with `root` as runsc's state root and `extra` lines under
/// `[runsc_config]` (a test lane's own flags); written to `path`.
pub fn installed_runsc_toml(
    path: &Path,
    build: &str,
    binary: &Path,
    root: Option<&Path>,
    extra: &str,
) -> PathBuf {
    let dir = path.with_extension("install");
    let _ = std::fs::remove_dir_all(&dir);
    let runsc_dir = runsc_binary(build)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let out = std::process::Command::new(shim_dir().join("containerd-shim-oomguard-v2"))
        .arg("install")
        .arg("--config-dir")
        .arg(&dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                runsc_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("run the shim's install");
    assert!(out.status.success(), "install --config-dir: {out:?}");
    let written = std::fs::read_to_string(dir.join("runsc.toml")).expect("install's runsc.toml");
    let mut text = String::new();
    for line in written.split_inclusive('\n') {
        if line.trim() == "binary_name = \"runsc\"" {
            text.push_str(&format!("binary_name = \"{}\"\n", binary.display()));
            if let Some(root) = root {
                text.push_str(&format!("root = \"{}\"\n", root.display()));
            }
            continue;
        }
        text.push_str(line);
        if line.trim() == "[runsc_config]" {
            text.push_str(extra);
        }
    }
    std::fs::write(path, text).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    path.to_path_buf()
}

/// The TOML a runsc user points oomguard at: what install writes, for BUILD.
pub fn runsc_config(c: &Containerd, build: &str) -> String {
    installed_runsc_toml(
        &c.dir.join(format!("runsc-{build}.toml")),
        build,
        &runsc_binary(build),
        Some(&c.dir.join("runsc-root")),
        "",
    )
    .display()
    .to_string()
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
