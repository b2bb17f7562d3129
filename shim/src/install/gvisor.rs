//! Whether the runsc on this node can run gVisor's own network stack in a
//! pod (its default, `network = "sandbox"`), for the runsc.toml `install`
//! writes.
//!
//! runsc before release-20240807 decides "this is the host's network
//! namespace" by whether `/proc/sys/net/core/rmem_default` exists; newer
//! kernels show that file in every namespace, so such a runsc refuses every
//! pod ("cannot run with network enabled in root network namespace"). The
//! check here asks the same question the same way: in a network namespace
//! of its own (a thread that unshares one), is the file there?

use std::path::{Path, PathBuf};

use oomguard_runtimes::gvisor::diagnose::NETNS_CHECK_FIXED_IN;
use oomguard_runtimes::gvisor::usage::parse_release;

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxNetwork {
    /// gVisor's default works here.
    Works(String),
    /// This runsc refuses every pod on this kernel: write `network = "host"`.
    Misfires { binary: PathBuf, release: String },
    /// No way to tell (no runsc found, not allowed to make a namespace).
    Unknown(String),
}

/// `binary_name` as containerd's shim would run it: a path, or a name
/// looked up on `PATH`.
fn find(binary_name: &str) -> Option<PathBuf> {
    if binary_name.contains('/') {
        return Some(PathBuf::from(binary_name)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary_name))
        .find(|p| p.is_file())
}

/// Whether a network namespace other than the host's shows
/// `/proc/sys/net/core/rmem_default` (what old runsc takes for "the host's").
fn fresh_netns_shows_rmem_default() -> Result<bool, String> {
    // unshare() moves only the calling thread: a thread of its own, gone
    // with its namespace when it ends.
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot make a network namespace to check in: {e}"))?;
        // /proc/sys/net is looked up in the namespace of the thread asking.
        Ok(Path::new("/proc/sys/net/core/rmem_default").exists())
    })
    .join()
    .map_err(|_| "the namespace check failed".to_string())?
}

pub fn sandbox_network(binary_name: &str) -> SandboxNetwork {
    let Some(binary) = find(binary_name) else {
        return SandboxNetwork::Unknown(format!("no {binary_name} found on PATH to check"));
    };
    let release = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| parse_release(&String::from_utf8_lossy(&o.stdout)));
    if let Some(r) = release.filter(|r| *r >= NETNS_CHECK_FIXED_IN) {
        return SandboxNetwork::Works(format!(
            "{} is runsc {r}, which tells a pod's network namespace from the host's",
            binary.display()
        ));
    }
    match fresh_netns_shows_rmem_default() {
        Ok(false) => SandboxNetwork::Works(
            "this kernel shows /proc/sys/net/core/rmem_default in the host's network namespace only"
                .into(),
        ),
        Ok(true) => SandboxNetwork::Misfires {
            binary,
            release: release.map_or_else(|| "of unknown release".into(), |r| r.to_string()),
        },
        Err(e) => SandboxNetwork::Unknown(e),
    }
}

/// The runsc.toml `install` writes: `default` (the canonical file), with
/// `fragment` (the canonical `network = "host"` lines) when the runsc here
/// misfires.
pub fn runsc_toml(default: &str, fragment: &str, network: &SandboxNetwork) -> String {
    if matches!(network, SandboxNetwork::Misfires { .. }) {
        with_fragment(default, fragment)
    } else {
        default.to_string()
    }
}

/// `default` with `fragment` after its `[runsc_config]` line (a table of its
/// own at the end when it has none).
pub fn with_fragment(default: &str, fragment: &str) -> String {
    let mut out = String::with_capacity(default.len() + fragment.len());
    let mut placed = false;
    for line in default.split_inclusive('\n') {
        out.push_str(line);
        if !placed && line.trim() == "[runsc_config]" {
            out.push_str(fragment);
            placed = true;
        }
    }
    if !placed {
        out.push_str("\n[runsc_config]\n");
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::snippets::{CONFIG_FILES, RUNSC_NETWORK_HOST};

    fn runsc_default() -> &'static str {
        CONFIG_FILES
            .iter()
            .find(|(n, _)| *n == "runsc.toml")
            .map(|(_, t)| *t)
            .unwrap()
    }

    #[test]
    fn the_fragment_goes_under_runsc_config() {
        let misfire = SandboxNetwork::Misfires {
            binary: "/usr/bin/runsc".into(),
            release: "20221219".into(),
        };
        let text = runsc_toml(runsc_default(), RUNSC_NETWORK_HOST, &misfire);
        let c = crate::config::RuntimeConfig::from_toml("runsc.toml", &text).unwrap();
        assert_eq!(c.runsc_flags(), ["--network=host"]);
        assert_eq!(c.binary_name, "runsc");
        let plain = runsc_toml(
            runsc_default(),
            RUNSC_NETWORK_HOST,
            &SandboxNetwork::Works("new".into()),
        );
        assert_eq!(plain, runsc_default());
        let c = crate::config::RuntimeConfig::from_toml("runsc.toml", &plain).unwrap();
        assert!(c.runsc_flags().is_empty(), "gVisor's defaults");
        // A file without the table gets one.
        let text = runsc_toml("binary_name = \"runsc\"\n", RUNSC_NETWORK_HOST, &misfire);
        let c = crate::config::RuntimeConfig::from_toml("runsc.toml", &text).unwrap();
        assert_eq!(c.runsc_flags(), ["--network=host"]);
    }

    /// This machine: Debian's runsc (20221219 or 20240729) on a 6.x kernel
    /// misfires; a runsc that says it is newer does not; no runsc is unknown.
    #[test]
    fn this_machine() {
        let dir =
            std::env::temp_dir().join(format!("oomguard-gvisor-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = |name: &str, release: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho 'runsc version {release}'\n")).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            p.display().to_string()
        };
        let new = fake("runsc-new", "release-20250101.0");
        assert!(matches!(sandbox_network(&new), SandboxNetwork::Works(_)));
        assert!(matches!(
            sandbox_network(&dir.join("absent").display().to_string()),
            SandboxNetwork::Unknown(_)
        ));
        let old = fake("runsc-old", "0.0~20240729.0");
        let kernel_shows = fresh_netns_shows_rmem_default();
        match (sandbox_network(&old), kernel_shows) {
            (SandboxNetwork::Misfires { release, .. }, Ok(true)) => {
                assert_eq!(release, "20240729")
            }
            (SandboxNetwork::Works(_), Ok(false)) => {}
            (SandboxNetwork::Unknown(_), Err(_)) => {}
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
