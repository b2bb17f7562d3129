//! The runtime configuration of a container: which OCI runtime binary, its
//! root and flags, and oomguard's own switches. It arrives in Create as a
//! protobuf `Any`, either `containerd.runc.v1.Options` (runc-style configs,
//! `ctr --runc-binary`) or `runtimeoptions.v1.Options` whose `ConfigPath`
//! (or `ConfigBody`) holds TOML in the keys gVisor's own shim reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message, MessageFull};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use serde::{Deserialize, Serialize};

pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("options: unsupported type URL {0:?} (expected {RUNC_OPTIONS} or {RUNTIME_OPTIONS})")]
    UnknownType(String),
    #[error("options: cannot decode {type_url}: {message}")]
    Decode { type_url: String, message: String },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("config file {path}: key {key:?}: {message}")]
    Key {
        path: String,
        key: String,
        message: String,
    },
}

/// The resolved configuration one container runs with. It is saved in the
/// bundle so that `delete` after a crashed shim finds the same runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    pub binary_name: String,
    pub root: Option<PathBuf>,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub io_uid: u32,
    pub io_gid: u32,
    pub shim_cgroup: String,
    pub log_level: Option<String>,
    /// runsc global flags, each given as `--key=value`.
    pub runsc_config: BTreeMap<String, String>,
    /// Kill the whole container when the OOM killer takes any of its
    /// processes (Kubernetes' cgroup v2 behaviour), on v1 too.
    pub oom_group: bool,
    /// Write an OOM kill's story into an empty termination-message file.
    #[serde(default = "yes")]
    pub termination_message: bool,
    /// Write it into the container's stderr too (`oom_report = "stderr"`).
    #[serde(default)]
    pub oom_report_stderr: bool,
    /// The memory warning's level (`memory_warning`, a share of the limit).
    #[serde(default = "default_warning")]
    pub memory_warning: String,
    /// cgroup v2: the PSI stall share that warns (`memory_warning_stall`).
    #[serde(default = "default_stall")]
    pub memory_warning_stall: String,
    /// Where it came from (the TOML file's path, "ConfigBody", "runc
    /// options"), for errors that name the key to change.
    #[serde(default)]
    pub source: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            binary_name: "runc".to_string(),
            root: None,
            systemd_cgroup: false,
            no_pivot_root: false,
            no_new_keyring: false,
            io_uid: 0,
            io_gid: 0,
            shim_cgroup: String::new(),
            log_level: None,
            runsc_config: BTreeMap::new(),
            oom_group: true,
            termination_message: true,
            oom_report_stderr: false,
            memory_warning: default_warning(),
            memory_warning_stall: default_stall(),
            source: String::new(),
        }
    }
}

/// The TOML file format. Unknown keys are errors: a typo must not silently
/// fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    binary_name: Option<String>,
    root: Option<PathBuf>,
    log_level: Option<String>,
    systemd_cgroup: Option<bool>,
    no_pivot_root: Option<bool>,
    no_new_keyring: Option<bool>,
    oom_group: Option<bool>,
    termination_message: Option<bool>,
    oom_report: Option<String>,
    memory_warning: Option<String>,
    memory_warning_stall: Option<String>,
    runsc_config: Option<BTreeMap<String, toml::Value>>,
}

fn yes() -> bool {
    true
}

fn default_warning() -> String {
    crate::warning::level::DEFAULT.to_string()
}

fn default_stall() -> String {
    crate::warning::level::DEFAULT_STALL.to_string()
}

impl RuntimeConfig {
    /// Decodes Create's options; `None` or an empty `Any` means defaults.
    pub fn from_any(any: Option<&Any>) -> Result<Self, ConfigError> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(Self::default());
        };
        let kind = any.type_url.rsplit('/').next().unwrap_or_default();
        match kind {
            RUNC_OPTIONS => {
                let decode_err = |message: String| ConfigError::Decode {
                    type_url: any.type_url.clone(),
                    message,
                };
                let o = RuncOptions::parse_from_bytes(&any.value)
                    .map_err(|e| decode_err(e.to_string()))?;
                declared_fields_with_wrong_wire_type(&o).map_err(decode_err)?;
                Ok(Self::from_runc_options(&o))
            }
            RUNTIME_OPTIONS => {
                let o =
                    RuntimeOptions::decode(&any.value).map_err(|message| ConfigError::Decode {
                        type_url: any.type_url.clone(),
                        message,
                    })?;
                if !o.config_path.is_empty() {
                    Self::from_file(Path::new(&o.config_path))
                } else if !o.config_body.is_empty() {
                    Self::from_toml("ConfigBody", &o.config_body)
                } else {
                    Ok(Self::default())
                }
            }
            other => Err(ConfigError::UnknownType(other.to_string())),
        }
    }

    fn from_runc_options(o: &RuncOptions) -> Self {
        let mut c = Self {
            source: "runc options".to_string(),
            ..Self::default()
        };
        if !o.binary_name.is_empty() {
            c.binary_name = o.binary_name.clone();
        }
        if !o.root.is_empty() {
            c.root = Some(PathBuf::from(&o.root));
        }
        c.systemd_cgroup = o.systemd_cgroup;
        c.no_pivot_root = o.no_pivot_root;
        c.no_new_keyring = o.no_new_keyring;
        c.io_uid = o.io_uid;
        c.io_gid = o.io_gid;
        c.shim_cgroup = o.shim_cgroup.clone();
        c
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let body = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml(&path.display().to_string(), &body)
    }

    pub fn from_toml(origin: &str, body: &str) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(body).map_err(|e| toml_error(origin, &e))?;
        let mut c = Self {
            source: origin.to_string(),
            ..Self::default()
        };
        if let Some(b) = file.binary_name.filter(|b| !b.is_empty()) {
            c.binary_name = b;
        }
        c.root = file.root;
        c.log_level = file.log_level;
        c.systemd_cgroup = file.systemd_cgroup.unwrap_or(false);
        c.no_pivot_root = file.no_pivot_root.unwrap_or(false);
        c.no_new_keyring = file.no_new_keyring.unwrap_or(false);
        c.oom_group = file.oom_group.unwrap_or(true);
        c.termination_message = file.termination_message.unwrap_or(true);
        for (key, value, slot) in [
            ("memory_warning", file.memory_warning, &mut c.memory_warning),
            (
                "memory_warning_stall",
                file.memory_warning_stall,
                &mut c.memory_warning_stall,
            ),
        ] {
            if let Some(v) = value {
                crate::warning::level::parse(&v).map_err(|message| ConfigError::Key {
                    path: origin.to_string(),
                    key: key.to_string(),
                    message,
                })?;
                *slot = v;
            }
        }
        if let Some(v) = &file.oom_report {
            c.oom_report_stderr =
                crate::story::parse_oom_report(v).map_err(|message| ConfigError::Key {
                    path: origin.to_string(),
                    key: "oom_report".to_string(),
                    message,
                })?;
        }
        for (key, value) in file.runsc_config.unwrap_or_default() {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => {
                    return Err(ConfigError::Key {
                        path: origin.to_string(),
                        key: format!("runsc_config.{key}"),
                        message: "must be a string, boolean or number".to_string(),
                    })
                }
            };
            c.runsc_config.insert(key, value);
        }
        Ok(c)
    }

    /// The reports the config asks for (annotations may change them).
    pub fn report_settings(&self) -> crate::story::Settings {
        crate::story::Settings {
            termination_message: self.termination_message,
            stderr: self.oom_report_stderr,
        }
    }

    /// The memory warning's level (checked when the config was read).
    pub fn warning_level(&self) -> crate::warning::Level {
        crate::warning::level::parse(&self.memory_warning).unwrap_or(crate::warning::level::DEFAULT)
    }

    /// The v2 stall level (checked when the config was read).
    pub fn warning_stall(&self) -> crate::warning::Level {
        crate::warning::level::parse(&self.memory_warning_stall)
            .unwrap_or(crate::warning::level::DEFAULT_STALL)
    }

    /// Whether the runtime binary is gVisor's runsc.
    pub fn is_runsc(&self) -> bool {
        Path::new(&self.binary_name)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("runsc"))
    }

    /// Global flags for the runtime binary: `[runsc_config]` applies to runsc only.
    pub fn runtime_global_flags(&self) -> Vec<String> {
        if self.is_runsc() {
            self.runsc_flags()
        } else {
            Vec::new()
        }
    }

    /// Global flags for runsc from `[runsc_config]`.
    pub fn runsc_flags(&self) -> Vec<String> {
        self.runsc_config
            .iter()
            .map(|(k, v)| format!("--{k}={v}"))
            .collect()
    }
}

/// The generated decoder files a declared field that came with another wire
/// type among the unknown fields, so `BinaryName` sent as a number would
/// silently read as empty (runc): an error names it instead.
fn declared_fields_with_wrong_wire_type<M: MessageFull>(m: &M) -> Result<(), String> {
    let descriptor = M::descriptor();
    let mut wrong: Vec<(u32, String)> = m
        .special_fields()
        .unknown_fields()
        .iter()
        .filter_map(|(number, value)| {
            descriptor
                .fields()
                .find(|f| f.number() as u32 == number)
                .map(|f| {
                    (
                        number,
                        format!(
                            "{} (field {number}) has wire type {:?}",
                            f.name(),
                            value.wire_type()
                        ),
                    )
                })
        })
        .collect();
    wrong.sort();
    match wrong.into_iter().next() {
        Some((_, what)) => Err(format!("{what}, not its declared type")),
        None => Ok(()),
    }
}

fn toml_error(origin: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().to_string();
    // serde names the offending key in the message ("unknown field `x`").
    match message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field"))
    {
        Some(key) => ConfigError::Key {
            path: origin.to_string(),
            key: key.to_string(),
            message: "unknown key".to_string(),
        },
        None => ConfigError::File {
            path: origin.to_string(),
            message: e.to_string().trim().to_string(),
        },
    }
}

/// `runtimeoptions.v1.Options` (CRI's and Docker's options for any runtime
/// type): type_url = 1, config_path = 2, config_body = 3. Its proto is not in
/// the shim protos, and three string fields do not justify generated code.
#[derive(Debug, Default, PartialEq)]
pub struct RuntimeOptions {
    pub type_url: String,
    pub config_path: String,
    pub config_body: String,
}

impl RuntimeOptions {
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        use containerd_shim_protos::protobuf::rt::WireType;
        let mut o = RuntimeOptions::default();
        let mut is = CodedInputStream::from_bytes(bytes);
        let names = ["type_url", "config_path", "config_body"];
        loop {
            let at = is.pos();
            let Some(tag) = is
                .read_raw_tag_or_eof()
                .map_err(|e| format!("field tag at byte {at}: {e}"))?
            else {
                break;
            };
            let (field, wire) = (tag >> 3, tag & 7);
            let wire = WireType::new(wire)
                .ok_or_else(|| format!("field {field}: undefined wire type {wire}"))?;
            let target = match field {
                1 => Some(&mut o.type_url),
                2 => Some(&mut o.config_path),
                3 => Some(&mut o.config_body),
                _ => None,
            };
            match target {
                Some(t) if wire == WireType::LengthDelimited => {
                    *t = is.read_string().map_err(|e| {
                        format!("{} (field {field}): {e}", names[field as usize - 1])
                    })?
                }
                // A known string field as a number must not read as "".
                Some(_) => {
                    return Err(format!(
                        "{} (field {field}) has wire type {wire:?}, not a string",
                        names[field as usize - 1]
                    ))
                }
                None => is
                    .skip_field(wire)
                    .map_err(|e| format!("field {field}: {e}"))?,
            }
        }
        Ok(o)
    }

    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        use containerd_shim_protos::protobuf::CodedOutputStream;
        let mut out = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut out);
            for (n, v) in [
                (1, &self.type_url),
                (2, &self.config_path),
                (3, &self.config_body),
            ] {
                if !v.is_empty() {
                    os.write_string(n, v).expect("vec write");
                }
            }
            os.flush().expect("vec flush");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.to_string();
        a.value = value;
        a
    }

    #[test]
    fn report_keys() {
        let c = RuntimeConfig::from_toml("t.toml", "").unwrap();
        assert!(c.termination_message && !c.oom_report_stderr);
        let c = RuntimeConfig::from_toml(
            "t.toml",
            "oom_report = \"stderr\"\ntermination_message = false\n",
        )
        .unwrap();
        assert!(!c.termination_message && c.oom_report_stderr);
        let e = RuntimeConfig::from_toml("t.toml", "oom_report = \"loud\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file t.toml: key \"oom_report\": \"loud\" is not \"stderr\" or \"none\""
        );
        let e = RuntimeConfig::from_toml("t.toml", "termination_message = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("termination_message"), "{e}");
        let e = RuntimeConfig::from_toml("t.toml", "memory_warning = \"150%\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config file t.toml: key \"memory_warning\": \"150%\""),
            "{e}"
        );
        let c = RuntimeConfig::from_toml("t.toml", "memory_warning = \"off\"\n").unwrap();
        assert_eq!(c.warning_level(), crate::warning::Level::Off);
        // A config saved by an older shim (no such keys) keeps the defaults.
        let old: RuntimeConfig = serde_json::from_str(
            r#"{"binary_name":"runc","root":null,"systemd_cgroup":false,"no_pivot_root":false,"no_new_keyring":false,"io_uid":0,"io_gid":0,"shim_cgroup":"","log_level":null,"runsc_config":{},"oom_group":true}"#,
        )
        .unwrap();
        assert!(old.termination_message && !old.oom_report_stderr);
    }

    #[test]
    fn no_options_means_runc_defaults() {
        let c = RuntimeConfig::from_any(None).unwrap();
        assert_eq!(c.binary_name, "runc");
        assert!(c.oom_group);
        assert_eq!(RuntimeConfig::from_any(Some(&Any::new())).unwrap(), c);
    }

    #[test]
    fn runc_options_by_type_url() {
        let mut o = RuncOptions::new();
        o.binary_name = "/usr/local/bin/crun".into();
        o.root = "/run/x".into();
        o.systemd_cgroup = true;
        let a = any("containerd.runc.v1.Options", o.write_to_bytes().unwrap());
        let c = RuntimeConfig::from_any(Some(&a)).unwrap();
        assert_eq!(c.binary_name, "/usr/local/bin/crun");
        assert_eq!(c.root.as_deref(), Some(Path::new("/run/x")));
        assert!(c.systemd_cgroup);
    }

    #[test]
    fn runtime_options_with_a_config_file() {
        let dir = std::env::temp_dir().join(format!("oomguard-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runsc.toml");
        std::fs::write(
            &path,
            "binary_name = \"runsc\"\nroot = \"/run/runsc\"\noom_group = false\n\
             [runsc_config]\nplatform = \"ptrace\"\nnetwork = \"none\"\ndebug = true\n",
        )
        .unwrap();
        let o = RuntimeOptions {
            type_url: "io.containerd.runsc.v1.options".into(),
            config_path: path.display().to_string(),
            config_body: String::new(),
        };
        let a = any("runtimeoptions.v1.Options", o.encode());
        let c = RuntimeConfig::from_any(Some(&a)).unwrap();
        assert_eq!(c.binary_name, "runsc");
        assert!(!c.oom_group);
        assert_eq!(
            c.runsc_flags(),
            vec!["--debug=true", "--network=none", "--platform=ptrace"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_body_is_not_read_as_runc_options() {
        // Decoded blindly as runc options, field 3 would land in shim_cgroup.
        let o = RuntimeOptions {
            config_body: "binary_name = \"runsc\"".into(),
            ..Default::default()
        };
        let a = any("type.googleapis.com/runtimeoptions.v1.Options", o.encode());
        let c = RuntimeConfig::from_any(Some(&a)).unwrap();
        assert_eq!(c.binary_name, "runsc");
        assert_eq!(c.shim_cgroup, "");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = RuntimeConfig::from_toml("/etc/oomguard.toml", "binary_nmae = \"runsc\"\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /etc/oomguard.toml: key \"binary_nmae\": unknown key"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let err = RuntimeConfig::from_file(Path::new("/nonexistent/oomguard.toml")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("config file /nonexistent/oomguard.toml: "));
        let err = RuntimeConfig::from_toml("f.toml", "oom_group = \"yes\"").unwrap_err();
        assert!(err.to_string().contains("f.toml"), "{err}");
        let err = RuntimeConfig::from_toml("f.toml", "[runsc_config]\nx = [1, 2]").unwrap_err();
        assert!(err.to_string().contains("runsc_config.x"), "{err}");
    }

    #[test]
    fn unknown_type_and_garbage_are_errors() {
        let a = any("example.com/Other", vec![]);
        assert!(matches!(
            RuntimeConfig::from_any(Some(&a)),
            Err(ConfigError::UnknownType(_))
        ));
        let a = any("runtimeoptions.v1.Options", vec![0x12, 0xff]);
        assert!(matches!(
            RuntimeConfig::from_any(Some(&a)),
            Err(ConfigError::Decode { .. })
        ));
    }

    #[test]
    fn options_fields_of_the_wrong_type_are_named() {
        // BinaryName (field 6) as a varint.
        let a = any("containerd.runc.v1.Options", vec![0x30, 0x01]);
        let err = RuntimeConfig::from_any(Some(&a)).unwrap_err().to_string();
        assert!(
            err.contains("binary_name (field 6) has wire type Varint"),
            "{err}"
        );
        // ConfigPath (field 2) as a varint.
        let a = any("runtimeoptions.v1.Options", vec![0x10, 0x01]);
        let err = RuntimeConfig::from_any(Some(&a)).unwrap_err().to_string();
        assert!(
            err.contains("config_path (field 2) has wire type Varint"),
            "{err}"
        );
        // A truncated ConfigBody names the field.
        let a = any("runtimeoptions.v1.Options", vec![0x1a, 0x05, b'x']);
        let err = RuntimeConfig::from_any(Some(&a)).unwrap_err().to_string();
        assert!(err.contains("config_body (field 3)"), "{err}");
        // Unknown fields of any type are skipped.
        let a = any(
            "runtimeoptions.v1.Options",
            vec![0x20, 0x01, 0x2d, 1, 2, 3, 4],
        );
        assert_eq!(
            RuntimeConfig::from_any(Some(&a)).unwrap(),
            RuntimeConfig::default()
        );
    }
}
