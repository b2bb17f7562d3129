//! `-info`: containerd 2.x asks a shim about itself (introspection's
//! PluginInfo for the runtime, which CRI uses to learn a handler's features
//! such as recursive read-only mounts and user namespaces). The runtime
//! options arrive on stdin as a protobuf `Any` (possibly empty); the answer
//! is a `containerd.types.RuntimeInfo` on stdout: the shim's name and
//! version, the options as understood, and the OCI runtime's own `features`
//! document where the runtime has one.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};

use crate::config::RuntimeConfig;

/// The runtime type containerd maps to this binary.
pub const RUNTIME_NAME: &str = "io.containerd.oomguard.v2";

/// How containerd names the OCI runtime-spec features document in an `Any`
/// (typeurl registration of `specs-go/features.Features`, JSON-encoded).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

pub fn run() -> Result<(), String> {
    let mut options = Vec::new();
    std::io::stdin()
        .read_to_end(&mut options)
        .map_err(|e| format!("info: read runtime options from stdin: {e}"))?;
    let info = runtime_info(&options)?;
    let bytes = info
        .write_to_bytes()
        .map_err(|e| format!("info: encode RuntimeInfo: {e}"))?;
    let mut out = std::io::stdout();
    out.write_all(&bytes)
        .and_then(|_| out.flush())
        .map_err(|e| format!("info: write RuntimeInfo: {e}"))
}

/// The answer for the options containerd sent (empty: the defaults).
pub fn runtime_info(options: &[u8]) -> Result<RuntimeInfo, String> {
    let any =
        if options.is_empty() {
            None
        } else {
            Some(Any::parse_from_bytes(options).map_err(|e| {
                format!("info: runtime options on stdin are not a protobuf Any: {e}")
            })?)
        };
    let config = RuntimeConfig::from_any(any.as_ref()).map_err(|e| format!("info: {e}"))?;
    let mut info = RuntimeInfo::new();
    info.name = RUNTIME_NAME.to_string();
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").to_string();
    info.version = MessageField::some(version);
    info.options = any.into();
    if let Some(features) = runtime_features(&config)? {
        let mut f = Any::new();
        f.type_url = FEATURES_TYPE_URL.to_string();
        f.value = features;
        info.features = MessageField::some(f);
    }
    Ok(info)
}

/// `BINARY [global flags] features`: runc's (and crun's) description of
/// what it supports. A runtime binary that does not exist is an error
/// naming it (as with the Go shim); one without the command (runsc, older
/// runc) has no features to report; a document that is not JSON is an error
/// naming the binary.
fn runtime_features(config: &RuntimeConfig) -> Result<Option<Vec<u8>>, String> {
    let binary = find_binary(&config.binary_name).ok_or_else(|| {
        format!(
            "info: runtime binary {:?} not found (binary_name; PATH is searched for a bare name)",
            config.binary_name
        )
    })?;
    let out = Command::new(&binary)
        .args(config.runtime_global_flags())
        .arg("features")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("info: run {} features: {e}", binary.display()))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout).map_err(|e| {
        format!(
            "info: `{} features` printed something that is not JSON: {e}",
            binary.display()
        )
    })?;
    Ok(Some(out.stdout))
}

/// The executable a binary name means: a path as it is, a bare name on PATH.
fn find_binary(name: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeOptions;

    fn any(type_url: &str, value: Vec<u8>) -> Vec<u8> {
        let mut a = Any::new();
        a.type_url = type_url.to_string();
        a.value = value;
        a.write_to_bytes().unwrap()
    }

    #[test]
    fn defaults_name_the_shim_and_echo_no_options() {
        let info = runtime_info(&[]).unwrap();
        assert_eq!(info.name, RUNTIME_NAME);
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert!(info.options.is_none());
        // runc on this machine has `runc features`: a JSON document.
        if let Some(f) = info.features.as_ref() {
            assert_eq!(f.type_url, FEATURES_TYPE_URL);
            let doc: serde_json::Value = serde_json::from_slice(&f.value).unwrap();
            assert!(doc.get("ociVersionMin").is_some(), "{doc}");
        }
    }

    #[test]
    fn options_are_echoed_and_bad_ones_named() {
        let body = RuntimeOptions {
            config_body: "binary_name = \"/nonexistent/runtime\"\n".into(),
            ..Default::default()
        }
        .encode();
        let err = runtime_info(&any("runtimeoptions.v1.Options", body)).unwrap_err();
        assert!(err.contains("/nonexistent/runtime"), "{err}");

        // A runtime without a `features` command: options echoed, no features.
        let body = RuntimeOptions {
            config_body: "binary_name = \"true\"\n".into(),
            ..Default::default()
        }
        .encode();
        let info = runtime_info(&any("runtimeoptions.v1.Options", body.clone())).unwrap();
        assert_eq!(info.options.type_url, "runtimeoptions.v1.Options");
        assert_eq!(info.options.value, body);
        assert!(info.features.is_none());

        let path = RuntimeOptions {
            config_path: "/nonexistent/oomguard.toml".into(),
            ..Default::default()
        }
        .encode();
        let err = runtime_info(&any("runtimeoptions.v1.Options", path)).unwrap_err();
        assert!(err.contains("/nonexistent/oomguard.toml"), "{err}");
        let err = runtime_info(b"\xff\xff not protobuf").unwrap_err();
        assert!(err.contains("not a protobuf Any"), "{err}");
    }
}
