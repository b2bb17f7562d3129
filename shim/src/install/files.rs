//! The oomguard TOML files the handlers point at (`ConfigPath`): written when
//! absent, never over an operator's; removed by uninstall only when they still
//! hold exactly what install wrote.

use std::fs;
use std::path::Path;

use super::cli::{Action, Options};
use super::gvisor::{self, SandboxNetwork};
use super::plan::{Change, Plan};
use super::snippets::{for_config_dir, CONFIG_FILES, RUNSC_NETWORK_HOST};

pub fn plan(opts: &Options, plan: &mut Plan) -> Result<(), String> {
    match opts.action {
        Action::Install => install(&opts.config_dir, plan),
        Action::Uninstall if opts.config_dir_given => uninstall(&opts.config_dir, plan),
        Action::Uninstall => {
            if CONFIG_FILES
                .iter()
                .any(|(name, _)| opts.config_dir.join(name).exists())
            {
                plan.note(format!(
                    "kept {}/{{runc,runsc}}.toml (uninstall removes them with --config-dir)",
                    opts.config_dir.display()
                ));
            }
            Ok(())
        }
    }
}

/// What install writes for `name`: the canonical file, and for runsc.toml
/// what the runsc on this node needs (`gvisor.rs`), with a note saying so.
fn wanted(name: &str, text: &str, dir: &Path, plan: &mut Plan) -> String {
    let want = for_config_dir(text, dir);
    if name != "runsc.toml" {
        return want;
    }
    let network = gvisor::sandbox_network("runsc");
    match &network {
            SandboxNetwork::Misfires { binary, release } => plan.note(format!(
                "{} (runsc {release}) cannot start gVisor's own network stack in a pod on this kernel \
                 (it takes every pod's network namespace for the host's; fixed in runsc release-{}): \
                 runsc.toml gets network = \"host\" (the host kernel's stack in the pod's namespace). \
                 After upgrading runsc, delete those lines from {} for gVisor's own stack",
                binary.display(),
                oomguard_runtimes::gvisor::diagnose::NETNS_CHECK_FIXED_IN,
                dir.join(name).display()
            )),
            SandboxNetwork::Unknown(why) => plan.note(format!(
                "runsc.toml keeps gVisor's default network (sandbox) unchecked: {why}; with runsc \
                 older than release-{} on a kernel that shows /proc/sys/net/core/rmem_default in \
                 every namespace, pods fail until [runsc_config] has network = \"host\"",
                oomguard_runtimes::gvisor::diagnose::NETNS_CHECK_FIXED_IN
            )),
            SandboxNetwork::Works(_) => {}
        }
    gvisor::runsc_toml(&want, RUNSC_NETWORK_HOST, &network)
}

fn install(dir: &Path, plan: &mut Plan) -> Result<(), String> {
    for (name, text) in CONFIG_FILES {
        let path = dir.join(name);
        let want = wanted(name, text, dir, plan);
        match read(&path)? {
            None => plan.change(
                Change {
                    path,
                    before: None,
                    after: Some(want),
                    what: "oomguard's runtime config".into(),
                    backup: false,
                },
                None,
            ),
            Some(have) if have == want => plan.note(format!("{} is already there", path.display())),
            Some(_) => plan.note(format!(
                "kept {} (not what install writes: the operator's own)",
                path.display()
            )),
        }
    }
    Ok(())
}

fn uninstall(dir: &Path, plan: &mut Plan) -> Result<(), String> {
    for (name, text) in CONFIG_FILES {
        let path = dir.join(name);
        let want = for_config_dir(text, dir);
        match read(&path)? {
            None => {}
            // Either form install writes (the runsc found may have changed).
            Some(have)
                if have == want
                    || (name == "runsc.toml"
                        && have == gvisor::with_fragment(&want, RUNSC_NETWORK_HOST)) =>
            {
                plan.change(
                    Change {
                        path,
                        before: Some(have),
                        after: None,
                        what: "as install wrote it".into(),
                        backup: false,
                    },
                    None,
                )
            }
            Some(_) => plan.note(format!(
                "kept {}: changed since install wrote it",
                path.display()
            )),
        }
    }
    plan.remove_dirs_if_empty.push(dir.to_path_buf());
    Ok(())
}

/// A file's text, `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<String>, String> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("{}: not UTF-8 text", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
