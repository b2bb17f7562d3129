//! The canonical configuration snippets (docs/configuration.md shows them,
//! the tests run them), compiled into the binary: what `install` writes is
//! these files, with `/etc/oomguard/` replaced by the chosen config directory
//! and the shim's canonical path (a `runtime_path`) by the binary that runs
//! `install`.

use std::path::Path;

/// CRI runtime handlers for containerd 1.6/1.7 (config `version = 2`).
pub const CONTAINERD_V2: &str = include_str!("../../../hack/cri/containerd-1.x.toml");
/// The same for containerd 2.x (config `version = 3`).
pub const CONTAINERD_V3: &str = include_str!("../../../hack/cri/containerd-2.x.toml");
/// Docker runtimes for daemon.json.
pub const DAEMON_JSON: &str = include_str!("../../../hack/docker/daemon.json");
/// The oomguard TOML files the handlers point at, by file name.
pub const CONFIG_FILES: [(&str, &str); 2] = [
    (
        "runc.toml",
        include_str!("../../../hack/cri/oomguard/runc.toml"),
    ),
    (
        "runsc.toml",
        include_str!("../../../hack/cri/oomguard/runsc.toml"),
    ),
];

/// The lines `install` adds under runsc.toml's `[runsc_config]` where the
/// runsc found cannot run gVisor's own network stack (`gvisor.rs`).
pub const RUNSC_NETWORK_HOST: &str =
    include_str!("../../../hack/cri/oomguard/runsc-network-host.toml");

/// The config directory the snippets are written for.
pub const CANONICAL_DIR: &str = "/etc/oomguard";

/// Where the snippets expect the shim (the Debian package's path).
pub const CANONICAL_BINARY: &str = "/usr/bin/containerd-shim-oomguard-v2";

/// `text` with the canonical config directory replaced by `dir`, and the
/// canonical binary path by the one installing (`shim_binary`).
pub fn for_config_dir(text: &str, dir: &Path) -> String {
    text.replace(&format!("{CANONICAL_DIR}/"), &format!("{}/", dir.display()))
        .replace(CANONICAL_BINARY, &shim_binary())
}

/// The binary the node installer placed on the host (`node.rs`): its
/// `current_exe` is the container's.
static PLACED_BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes `runtime_path` name `path` (a checked host path) from now on.
pub fn use_placed_binary(path: &Path) -> Result<(), String> {
    let s = path
        .to_str()
        .filter(|s| !s.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
        .ok_or_else(|| format!("{}: not a path a config can name", path.display()))?;
    let _ = PLACED_BINARY.set(s.to_string());
    Ok(())
}

/// The binary a `runtime_path` should name: the one the node installer
/// placed; else this one, when it is the shim (`install` run from
/// /usr/local/bin configures /usr/local/bin's); else (unit tests, odd
/// characters) the canonical path.
fn shim_binary() -> String {
    if let Some(placed) = PLACED_BINARY.get() {
        return placed.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == "containerd-shim-oomguard-v2")
        })
        .and_then(|p| p.to_str().map(str::to_string))
        .filter(|p| !p.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
        .unwrap_or_else(|| CANONICAL_BINARY.to_string())
}

/// A config directory that can stand in a TOML or JSON string as it is:
/// absolute, no quotes, backslashes or control characters.
pub fn check_config_dir(dir: &Path) -> Result<(), String> {
    let s = dir
        .to_str()
        .ok_or_else(|| format!("--config-dir {}: not UTF-8", dir.display()))?;
    if !s.starts_with('/') {
        return Err(format!("--config-dir {s}: must be an absolute path"));
    }
    if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(format!(
            "--config-dir {s:?}: quotes, backslashes and control characters are not supported"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dir_is_substituted_everywhere() {
        let dir = Path::new("/opt/og");
        for text in [CONTAINERD_V2, CONTAINERD_V3, DAEMON_JSON] {
            let out = for_config_dir(text, dir);
            assert!(!out.contains("/etc/oomguard/"), "{out}");
            assert!(out.contains("/opt/og/runsc.toml"), "{out}");
            assert_eq!(
                out.contains("/opt/og/runc.toml"),
                text.contains("/etc/oomguard/runc.toml"),
                "{out}"
            );
        }
        // Under the test harness the running binary is not the shim: the
        // canonical runtime_path stays.
        assert!(for_config_dir(CONTAINERD_V3, dir).contains(CANONICAL_BINARY));
    }

    #[test]
    fn config_dir_must_be_plain_and_absolute() {
        assert!(check_config_dir(Path::new("/etc/oomguard")).is_ok());
        assert!(check_config_dir(Path::new("etc/oomguard")).is_err());
        assert!(check_config_dir(Path::new("/etc/oom\"guard")).is_err());
        assert!(check_config_dir(Path::new("/etc/oom\nguard")).is_err());
    }
}
