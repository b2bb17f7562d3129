//! `containerd-shim-oomguard-v2 install | uninstall`: wires oomguard into a
//! node's containerd config, Docker daemon.json and /etc/oomguard (or takes it
//! out again), from the canonical snippets compiled into the binary. Every
//! file is read and checked before anything is written; nothing restarts a
//! daemon.

mod cli;
mod containerd;
mod cri_tables;
mod docker;
mod files;
mod gvisor;
mod node;
mod plan;
mod snippets;

use std::ffi::OsString;

use cli::{Action, Parsed};
use plan::Plan;

const NAME: &str = "containerd-shim-oomguard-v2";

/// Runs `install`/`uninstall` when that is the first argument and returns the
/// exit code; `None` for every other command line (containerd's).
pub fn dispatch(args: &[OsString]) -> Option<i32> {
    let action = match args.get(1).and_then(|a| a.to_str()) {
        Some("install") => Action::Install,
        Some("uninstall") => Action::Uninstall,
        _ => return None,
    };
    let opts = match cli::parse(action, &args[2..]) {
        Ok(Parsed::Run(opts)) => opts,
        Ok(Parsed::Help) => {
            print!("{}", cli::usage(action));
            return Some(0);
        }
        Err(e) => {
            eprintln!("{NAME} {action}: {e}\n\n{}", cli::usage(action));
            return Some(2);
        }
    };
    // The node installer says itself what was written before a failure.
    let result = match opts.node {
        Some(_) => node::run(&opts),
        None => run(&opts).map_err(|e| format!("{e}\nnothing was written")),
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{NAME} {action}: {e}");
            1
        }
    })
}

/// Every change the options ask for (`docker`: daemon.json, when wanted),
/// every file read and checked, nothing written.
fn plan_all(opts: &cli::Options, docker: Option<&std::path::Path>) -> Result<Plan, String> {
    let mut plan = Plan::default();
    if let Some(path) = &opts.containerd {
        containerd::plan(opts, path, &mut plan)?;
    }
    if let Some(path) = docker {
        docker::plan(opts.action, path, &opts.config_dir, &mut plan)?;
    }
    files::plan(opts, &mut plan)?;
    Ok(plan)
}

fn run(opts: &cli::Options) -> Result<(), String> {
    let plan = plan_all(opts, opts.docker.as_deref())?;
    let action = opts.action;
    for note in &plan.notes {
        println!("{NAME} {action}: {note}");
    }
    if opts.dry_run {
        print!("{}", plan.diff());
        println!(
            "{NAME} {action}: dry run: {} file(s) would change; nothing written",
            plan.changes.len()
        );
        return Ok(());
    }
    if plan.changes.is_empty() {
        println!("{NAME} {action}: nothing to change");
        return Ok(());
    }
    for line in plan.apply()? {
        println!("{NAME} {action}: {line}");
    }
    for daemon in &plan.restart {
        println!("{NAME} {action}: restart {daemon} to apply: systemctl restart {daemon}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    /// One unreadable file stops the whole run before anything is written,
    /// the readable files included.
    #[test]
    fn nothing_is_written_when_any_file_is_bad() {
        let d = std::env::temp_dir().join(format!("og-install-all-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let config = d.join("config.toml");
        let good = "version = 2\n";
        fs::write(&config, good).unwrap();
        let daemon = d.join("daemon.json");
        fs::write(&daemon, "{\"runtimes\": {,}}").unwrap();
        let opts = cli::Options {
            action: Action::Install,
            containerd: Some(config.clone()),
            docker: Some(daemon.clone()),
            config_dir: d.join("etc"),
            config_dir_given: true,
            default: false,
            dry_run: false,
            node: None,
        };
        let e = run(&opts).unwrap_err();
        assert!(
            e.contains(&format!("{}: cannot parse", daemon.display())),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&config).unwrap(), good);
        let names: Vec<PathBuf> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::remove_dir_all(&d).unwrap();
    }
}
