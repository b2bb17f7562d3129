//! The command line of `install` and `uninstall`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use super::snippets::{check_config_dir, CANONICAL_DIR};

pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";
pub const DEFAULT_RESTART_CONTAINERD: &str = "systemctl restart containerd";
pub const DEFAULT_RESTART_DOCKER: &str = "systemctl reload docker";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Install,
    Uninstall,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Install => "install",
            Action::Uninstall => "uninstall",
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub action: Action,
    /// containerd's config.toml, when `--containerd` was given.
    pub containerd: Option<PathBuf>,
    /// Docker's daemon.json, when `--docker` was given.
    pub docker: Option<PathBuf>,
    pub config_dir: PathBuf,
    /// `--config-dir` was given (uninstall removes the TOML files only then).
    pub config_dir_given: bool,
    /// Make `oomguard` the CRI default runtime (install only).
    pub default: bool,
    pub dry_run: bool,
    /// `--host-root`: the node-side installer's work (`node.rs`).
    pub node: Option<Node>,
}

/// What the node-side installer (a DaemonSet's pod) does beyond `install`.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    /// The host's `/`, as mounted into the installer's container.
    pub host_root: PathBuf,
    /// Where on the host the binary goes (a host path).
    pub bin_dir: PathBuf,
    /// Run on the host when containerd's config changed ("" for never).
    pub restart_containerd: String,
    /// Run on the host when daemon.json changed ("" for never).
    pub restart_docker: String,
    /// The host process whose namespaces the restart commands run in (the
    /// host's init).
    pub host_pid: u32,
    /// Install, then wait for SIGTERM/SIGINT and uninstall.
    pub wait: bool,
}

/// What the command line asks for: work, or the help text.
#[derive(Debug)]
pub enum Parsed {
    Run(Options),
    Help,
}

pub fn usage(action: Action) -> String {
    let what = match action {
        Action::Install => {
            "Adds oomguard's runtime handlers to containerd's config and Docker's daemon.json,\n\
             and writes the oomguard TOML files they point at (only where absent)."
        }
        Action::Uninstall => {
            "Removes what install added: its runtime handlers (where unchanged), the drop-in file it\n\
             created, the CRI default it set; with --config-dir, also its unchanged TOML files."
        }
    };
    format!(
        "usage: containerd-shim-oomguard-v2 {action} [--containerd [CONFIG]] [--docker [DAEMON_JSON]]\n\
         \x20      [--config-dir DIR]{default} [--dry-run]\n\
         \x20      [--host-root DIR [--bin-dir DIR] [--restart-containerd CMD] [--restart-docker CMD]\n\
         \x20      [--host-pid PID]{wait}]\n\n\
         {what}\n\n\
         \x20 --containerd [CONFIG]    containerd's config (default {DEFAULT_CONTAINERD_CONFIG}); a file\n\
         \x20                          whose imports has a DIR/*.toml glob gets a drop-in there instead\n\
         \x20 --docker [DAEMON_JSON]   Docker's daemon.json (default {DEFAULT_DAEMON_JSON})\n\
         \x20 --config-dir DIR         where runc.toml and runsc.toml live (default {CANONICAL_DIR})\n{default_help}\
         \x20 --dry-run                print the changes as a unified diff; write nothing\n\n\
         Every file it changes is backed up first (FILE.oomguard-backup-TIME). It never restarts a\n\
         daemon: it prints the command to run. Except with --host-root, the node-side installer\n\
         (a DaemonSet's pod, the host's / mounted at DIR): every path above is then the host's;\n\
         the binary is {placed} --bin-dir (default {DEFAULT_BIN_DIR}); the TOML files are\n\
         {files}; daemon.json only where Docker is (dockerd on the host's PATH or the file exists);\n\
         a daemon whose config changed is restarted by its command, run in the namespaces of the\n\
         host's process --host-pid (default 1, init; defaults: {DEFAULT_RESTART_CONTAINERD:?}, {DEFAULT_RESTART_DOCKER:?}; \"\"\n\
         for never).{wait_help}\n",
        default = if action == Action::Install { " [--default]" } else { "" },
        wait = if action == Action::Install { " [--wait]" } else { "" },
        placed = if action == Action::Install { "copied to" } else { "removed from" },
        files = if action == Action::Install { "written" } else { "removed where unchanged" },
        wait_help = if action == Action::Install {
            " --wait then waits for SIGTERM (the pod deleted) and uninstalls the same way."
        } else {
            ""
        },
        default_help = if action == Action::Install {
            "  --default                make \"oomguard\" containerd's CRI default runtime\n"
        } else {
            ""
        },
    )
}

pub fn parse(action: Action, args: &[OsString]) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut containerd = None;
    let mut docker = None;
    let mut config_dir = None;
    let mut default = false;
    let mut dry_run = false;
    let mut host_root = None;
    let mut bin_dir = None;
    let mut restart_containerd = None;
    let mut restart_docker = None;
    let mut wait = false;
    let mut host_pid = None;
    let mut parser = lexopt::Parser::from_args(args.iter().cloned());
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = parser.next().map_err(err)? {
        match arg {
            Long("containerd") => {
                containerd = Some(optional_path(&mut parser, DEFAULT_CONTAINERD_CONFIG)?)
            }
            Long("docker") => docker = Some(optional_path(&mut parser, DEFAULT_DAEMON_JSON)?),
            Long("config-dir") => config_dir = Some(PathBuf::from(parser.value().map_err(err)?)),
            Long("default") if action == Action::Install => default = true,
            Long("dry-run") => dry_run = true,
            Long("host-root") => host_root = Some(PathBuf::from(parser.value().map_err(err)?)),
            Long("bin-dir") => bin_dir = Some(PathBuf::from(parser.value().map_err(err)?)),
            Long("restart-containerd") => restart_containerd = Some(text(&mut parser)?),
            Long("restart-docker") => restart_docker = Some(text(&mut parser)?),
            Long("wait") if action == Action::Install => wait = true,
            Long("host-pid") => {
                let v = text(&mut parser)?;
                host_pid = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("--host-pid {v:?}: not a process id"))?,
                )
            }
            Short('h') | Long("help") => return Ok(Parsed::Help),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let node = match host_root {
        Some(host_root) => {
            if !host_root.is_absolute() {
                return Err(format!(
                    "--host-root {}: must be an absolute path",
                    host_root.display()
                ));
            }
            if dry_run {
                return Err("--host-root and --dry-run: the node installer always writes".into());
            }
            let bin_dir = bin_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
            check_config_dir(&bin_dir).map_err(|e| e.replace("--config-dir", "--bin-dir"))?;
            // Its TOML files are its own to take away again; daemon.json is
            // left alone where there is no Docker (node.rs).
            config_dir.get_or_insert_with(|| PathBuf::from(CANONICAL_DIR));
            containerd.get_or_insert_with(|| PathBuf::from(DEFAULT_CONTAINERD_CONFIG));
            docker.get_or_insert_with(|| PathBuf::from(DEFAULT_DAEMON_JSON));
            Some(Node {
                host_root,
                bin_dir,
                restart_containerd: restart_containerd
                    .unwrap_or_else(|| DEFAULT_RESTART_CONTAINERD.into()),
                restart_docker: restart_docker.unwrap_or_else(|| DEFAULT_RESTART_DOCKER.into()),
                host_pid: host_pid.unwrap_or(1),
                wait,
            })
        }
        None => {
            let only_node = [
                ("--bin-dir", bin_dir.is_some()),
                ("--restart-containerd", restart_containerd.is_some()),
                ("--restart-docker", restart_docker.is_some()),
                ("--wait", wait),
                ("--host-pid", host_pid.is_some()),
            ];
            if let Some((flag, _)) = only_node.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "{flag} is for the node installer: give --host-root too"
                ));
            }
            None
        }
    };
    let config_dir_given = config_dir.is_some();
    let config_dir = config_dir.unwrap_or_else(|| PathBuf::from(CANONICAL_DIR));
    check_config_dir(&config_dir)?;
    if containerd.is_none() && docker.is_none() && !config_dir_given {
        return Err("say what to change: --containerd, --docker and/or --config-dir".into());
    }
    Ok(Parsed::Run(Options {
        action,
        containerd,
        docker,
        config_dir,
        config_dir_given,
        default,
        dry_run,
        node,
    }))
}

/// A flag's value as UTF-8 (a command line for `sh -c`).
fn text(parser: &mut lexopt::Parser) -> Result<String, String> {
    let v = parser.value().map_err(|e| e.to_string())?;
    v.into_string()
        .map_err(|v| format!("{}: not UTF-8", v.to_string_lossy()))
}

/// `--opt=PATH`, `--opt PATH` (a next word that is not an option), or the
/// default.
fn optional_path(parser: &mut lexopt::Parser, default: &str) -> Result<PathBuf, String> {
    if let Some(v) = parser.optional_value() {
        return Ok(PathBuf::from(v));
    }
    let mut raw = parser.raw_args().map_err(|e| e.to_string())?;
    let next = raw.next_if(|a| !a.to_string_lossy().starts_with('-'));
    Ok(next
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(action: Action, args: &[&str]) -> Result<Options, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(action, &args)? {
            Parsed::Run(o) => Ok(o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn optional_values_and_defaults() {
        let o = run(Action::Install, &["--containerd", "--docker"]).unwrap();
        assert_eq!(o.containerd, Some(PathBuf::from(DEFAULT_CONTAINERD_CONFIG)));
        assert_eq!(o.docker, Some(PathBuf::from(DEFAULT_DAEMON_JSON)));
        assert_eq!(o.config_dir, PathBuf::from("/etc/oomguard"));
        assert!(!o.config_dir_given && !o.default && !o.dry_run);

        let o = run(
            Action::Install,
            &[
                "--containerd",
                "/x/c.toml",
                "--docker=/x/d.json",
                "--default",
                "--dry-run",
            ],
        )
        .unwrap();
        assert_eq!(o.containerd, Some(PathBuf::from("/x/c.toml")));
        assert_eq!(o.docker, Some(PathBuf::from("/x/d.json")));
        assert!(o.default && o.dry_run);

        let o = run(Action::Uninstall, &["--config-dir", "/opt/og"]).unwrap();
        assert_eq!(o.config_dir, PathBuf::from("/opt/og"));
        assert!(o.config_dir_given && o.containerd.is_none());
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(run(Action::Install, &[]).is_err());
        assert!(run(Action::Install, &["--containerd", "--bogus"]).is_err());
        assert!(run(Action::Install, &["--config-dir"]).is_err());
        assert!(run(Action::Install, &["--config-dir", "relative"]).is_err());
        assert!(run(Action::Uninstall, &["--containerd", "--default"]).is_err());
        assert!(run(Action::Install, &["stray"]).is_err());
        assert_eq!(run(Action::Install, &["--help"]).unwrap_err(), "help");
    }

    #[test]
    fn the_node_installer() {
        let o = run(Action::Install, &["--host-root", "/host", "--wait"]).unwrap();
        let node = o.node.as_ref().unwrap();
        assert_eq!(node.host_root, PathBuf::from("/host"));
        assert_eq!(node.bin_dir, PathBuf::from(DEFAULT_BIN_DIR));
        assert_eq!(node.restart_containerd, DEFAULT_RESTART_CONTAINERD);
        assert!(node.wait);
        assert_eq!(node.host_pid, 1);
        // Its TOML files are removed again by uninstall.
        assert!(o.config_dir_given);

        let o = run(
            Action::Uninstall,
            &[
                "--host-root=/host",
                "--containerd",
                "/etc/containerd/config.toml",
                "--bin-dir",
                "/opt/bin",
                "--restart-containerd",
                "",
            ],
        )
        .unwrap();
        let node = o.node.unwrap();
        assert_eq!(node.bin_dir, PathBuf::from("/opt/bin"));
        assert_eq!(node.restart_containerd, "");

        for (args, says) in [
            (
                &["--wait", "--containerd"][..],
                "--wait is for the node installer",
            ),
            (
                &["--bin-dir", "/x", "--containerd"],
                "--bin-dir is for the node",
            ),
            (
                &["--host-root", "host"],
                "--host-root host: must be an absolute",
            ),
            (
                &["--host-root", "/h", "--bin-dir", "bin"],
                "--bin-dir bin: must be",
            ),
            (&["--host-root", "/h", "--dry-run"], "always writes"),
            (
                &["--host-root", "/h", "--host-pid", "0"],
                "--host-pid \"0\": not a process",
            ),
            (
                &["--host-root", "/h", "--host-pid", "x"],
                "--host-pid \"x\": not a process",
            ),
        ] {
            let e = run(Action::Install, args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
        assert!(run(Action::Uninstall, &["--host-root", "/h", "--wait"]).is_err());
    }
}
