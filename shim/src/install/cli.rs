//! The command line of `install` and `uninstall`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use super::snippets::{check_config_dir, CANONICAL_DIR};

pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";

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
         \x20      [--config-dir DIR]{default} [--dry-run]\n\n\
         {what}\n\n\
         \x20 --containerd [CONFIG]    containerd's config (default {DEFAULT_CONTAINERD_CONFIG}); a file\n\
         \x20                          whose imports has a DIR/*.toml glob gets a drop-in there instead\n\
         \x20 --docker [DAEMON_JSON]   Docker's daemon.json (default {DEFAULT_DAEMON_JSON})\n\
         \x20 --config-dir DIR         where runc.toml and runsc.toml live (default {CANONICAL_DIR})\n{default_help}\
         \x20 --dry-run                print the changes as a unified diff; write nothing\n\n\
         Every file it changes is backed up first (FILE.oomguard-backup-TIME). It never restarts a\n\
         daemon: it prints the command to run.\n",
        default = if action == Action::Install { " [--default]" } else { "" },
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
            Short('h') | Long("help") => return Ok(Parsed::Help),
            other => return Err(other.unexpected().to_string()),
        }
    }
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
    }))
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
}
