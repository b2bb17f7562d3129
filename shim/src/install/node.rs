//! The node-side installer (`install --host-root DIR`): what a DaemonSet's
//! pod runs on every node. It works on the host's files through the host's
//! root (a chroot into the hostPath mount), so `install`'s logic, the
//! containerd and runsc it asks and the paths it writes into configs are
//! all the host's. It places the binary, installs, restarts a daemon only
//! when that daemon's config changed, and with `--wait` stays until the pod
//! is deleted (SIGTERM), then uninstalls the same way.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{SigSet, Signal};

use super::cli::{Action, Node, Options};
use super::plan::Plan;
use super::{plan_all, snippets, NAME};

/// The PATH commands get on the host (the container's is the image's).
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(opts: &Options) -> Result<(), String> {
    let Some(node) = &opts.node else {
        return Err("internal: node::run without --host-root".into());
    };
    // A SIGTERM during the install waits until it is done (then uninstalls
    // at once) rather than killing it half way through a write.
    let stop = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT]);
    if node.wait {
        stop.thread_block()
            .map_err(|e| format!("cannot block SIGTERM to wait for it: {e}"))?;
    }
    let own = fs::read("/proc/self/exe")
        .map_err(|e| format!("cannot read this binary (/proc/self/exe) to place it: {e}"))?;
    enter_host_root(&node.host_root)?;
    let placed = node.bin_dir.join(NAME);
    snippets::use_placed_binary(&placed)?;

    let say = |line: &str| println!("{NAME} {}: {line}", opts.action);
    let first = opts.action;
    once(opts, node, first, &own, &placed, &say)?;
    if first == Action::Uninstall || !node.wait {
        return Ok(());
    }
    say("installed; waiting for SIGTERM (the pod deleted) to uninstall");
    let signal = stop
        .wait()
        .map_err(|e| format!("waiting for SIGTERM failed: {e}"))?;
    let say = |line: &str| println!("{NAME} uninstall: {line}");
    say(&format!("{signal} received: uninstalling"));
    once(opts, node, Action::Uninstall, &own, &placed, &say)
}

/// One install or uninstall on the host: plan (every file read and checked,
/// nothing written), the binary, the files, then the restarts.
fn once(
    opts: &Options,
    node: &Node,
    action: Action,
    own: &[u8],
    placed: &Path,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let opts = Options {
        action,
        containerd: opts.containerd.clone(),
        docker: opts.docker.clone(),
        config_dir: opts.config_dir.clone(),
        config_dir_given: true,
        default: opts.default && action == Action::Install,
        dry_run: false,
        node: None,
    };
    let docker = opts.docker.as_deref().filter(|json| docker_here(json, say));
    let plan = plan_all(&opts, docker).map_err(|e| format!("{e}; nothing was written"))?;
    for note in &plan.notes {
        say(note);
    }
    // The binary first on install (the configs name it), last on uninstall.
    if action == Action::Install {
        place_binary(placed, own, say)?;
    }
    apply(&plan, say)?;
    if action == Action::Uninstall {
        remove_binary(placed, own, say)?;
    }
    restart(&plan, node, say)
}

fn apply(plan: &Plan, say: &dyn Fn(&str)) -> Result<(), String> {
    if plan.changes.is_empty() {
        say("no config to change");
        return Ok(());
    }
    for line in plan.apply()? {
        say(&line);
    }
    Ok(())
}

/// Docker is on the node: dockerd on the host's PATH, or its daemon.json.
fn docker_here(json: &Path, say: &dyn Fn(&str)) -> bool {
    let dockerd = HOST_PATH
        .split(':')
        .map(|dir| Path::new(dir).join("dockerd"))
        .find(|p| p.is_file());
    if dockerd.is_some() || json.exists() {
        return true;
    }
    say(&format!(
        "left {} alone: no Docker on this node (no dockerd on PATH, no such file)",
        json.display()
    ));
    false
}

/// chroot into the host's root: from here on every path is the host's.
fn enter_host_root(root: &Path) -> Result<(), String> {
    let etc = root.join("etc");
    if !etc.is_dir() {
        return Err(format!(
            "--host-root {}: no {} there; mount the host's / (hostPath) at {}",
            root.display(),
            etc.display(),
            root.display()
        ));
    }
    nix::unistd::chroot(root).map_err(|e| {
        format!(
            "cannot enter the host's root {} (chroot: {e}; the container needs CAP_SYS_CHROOT)",
            root.display()
        )
    })?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir / in the host's root: {e}"))?;
    // Single-threaded still: nothing reads the environment concurrently.
    std::env::set_var("PATH", HOST_PATH);
    Ok(())
}

/// Writes this binary to `path` unless it is there already (an upgrade
/// replaces an older one; running shims keep the file they started from).
fn place_binary(path: &Path, own: &[u8], say: &dyn Fn(&str)) -> Result<(), String> {
    match fs::read(path) {
        Ok(have) if have == own => {
            say(&format!("{} is already this binary", path.display()));
            return Ok(());
        }
        Ok(_) | Err(_) => {}
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{NAME}.oomguard-new"));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(own)?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("{}: cannot place the binary: {e}", path.display())
    })?;
    say(&format!("placed {}", path.display()));
    Ok(())
}

/// Removes the binary at `path` if it is this one (another there is not
/// ours to take).
fn remove_binary(path: &Path, own: &[u8], say: &dyn Fn(&str)) -> Result<(), String> {
    match fs::read(path) {
        Ok(have) if have == own => {
            fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
            say(&format!("removed {}", path.display()));
        }
        Ok(_) => say(&format!(
            "kept {}: not the binary this installer placed",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    Ok(())
}

/// Runs the restart command of every daemon whose config changed.
fn restart(plan: &Plan, node: &Node, say: &dyn Fn(&str)) -> Result<(), String> {
    for daemon in &plan.restart {
        let (command, fatal) = match *daemon {
            "containerd" => (&node.restart_containerd, true),
            // Docker reads daemon.json when it starts; one not running is
            // not an error.
            _ => (&node.restart_docker, false),
        };
        if command.is_empty() {
            say(&format!(
                "{daemon}'s config changed; not restarting it (no command given): restart it to apply"
            ));
            continue;
        }
        say(&format!(
            "{daemon}'s config changed: running {command:?} on the host"
        ));
        match on_host(command, node.host_pid) {
            Ok(()) => say(&format!("{daemon}: {command:?} done")),
            Err(e) if fatal => {
                return Err(format!(
                    "{daemon}'s config changed, but {e}: restart {daemon} on the node to apply"
                ))
            }
            Err(e) => say(&format!(
                "warning: {e} ({daemon} applies the config when it starts)"
            )),
        }
    }
    Ok(())
}

/// `sh -c COMMAND` in the namespaces of the host's process `pid` (its init:
/// mount, UTS, IPC, network, cgroup), as `nsenter --target 1` would:
/// `systemctl` there talks to the host's systemd.
fn on_host(command: &str, pid: u32) -> Result<(), String> {
    let namespaces: Vec<OwnedFd> = ["cgroup", "ipc", "uts", "net", "mnt"]
        .iter()
        .map(|ns| {
            let path = PathBuf::from(format!("/proc/{pid}/ns")).join(ns);
            File::open(&path).map(OwnedFd::from).map_err(|e| {
                format!(
                    "cannot open {} to enter the host's namespaces ({e}; the pod needs \
                     hostPID and CAP_SYS_ADMIN, CAP_SYS_PTRACE)",
                    path.display()
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let fds: Vec<i32> = namespaces.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([OsStr::new("-c"), OsStr::new(command)]);
    // SAFETY: between fork and exec only setns(2) runs, which is
    // async-signal-safe; the fds stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::setns(*fd, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let status = cmd
        .status()
        .map_err(|e| format!("{command:?} could not start in the host's namespaces: {e}"))?;
    drop(namespaces);
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}
