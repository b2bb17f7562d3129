//! Which reports a container gets: the oomguard TOML's keys, overridden per
//! pod or container by annotations. A malformed annotation is an error
//! naming the key, logged; the container runs with the TOML's value.

use log::warn;

/// `"stderr"` or `"none"`: the OOM story in the container's stderr.
pub const OOM_REPORT_ANNOTATION: &str = "io.oomguard.oom-report";
/// `"true"` or `"false"`: the OOM story in an empty termination-message file.
pub const TERMINATION_MESSAGE_ANNOTATION: &str = "io.oomguard.termination-message";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub termination_message: bool,
    pub stderr: bool,
}

/// `oom_report`'s values, in the TOML and the annotation.
pub fn parse_oom_report(value: &str) -> Result<bool, String> {
    match value {
        "stderr" => Ok(true),
        "none" => Ok(false),
        other => Err(format!("{other:?} is not \"stderr\" or \"none\"")),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{other:?} is not \"true\" or \"false\"")),
    }
}

impl Settings {
    /// The TOML's settings (`defaults`) with the spec's annotations over
    /// them; the errors of malformed annotations come back beside.
    pub fn for_spec(spec: &serde_json::Value, defaults: Settings) -> (Settings, Vec<String>) {
        let mut s = defaults;
        let mut errors = Vec::new();
        let annotations = spec.pointer("/annotations");
        let mut apply = |key: &str, parse: fn(&str) -> Result<bool, String>, slot: &mut bool| {
            let Some(v) = annotations.and_then(|a| a.get(key)) else {
                return;
            };
            match v
                .as_str()
                .ok_or_else(|| format!("{v} is not a string"))
                .and_then(|t| parse(t.trim()))
            {
                Ok(b) => *slot = b,
                Err(e) => errors.push(format!(
                    "annotation {key}: {e}; using {} (the config's)",
                    *slot
                )),
            }
        };
        apply(OOM_REPORT_ANNOTATION, parse_oom_report, &mut s.stderr);
        apply(
            TERMINATION_MESSAGE_ANNOTATION,
            parse_bool,
            &mut s.termination_message,
        );
        (s, errors)
    }

    /// `for_spec`, the errors logged.
    pub fn resolve(id: &str, spec: &serde_json::Value, defaults: Settings) -> Settings {
        let (s, errors) = Self::for_spec(spec, defaults);
        for e in errors {
            warn!("create id={id}: {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Settings = Settings {
        termination_message: true,
        stderr: false,
    };

    fn with(annotations: &str) -> (Settings, Vec<String>) {
        let spec: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.1.0","annotations":{annotations}}}"#
        ))
        .unwrap();
        Settings::for_spec(&spec, DEFAULTS)
    }

    #[test]
    fn annotations_override_the_config() {
        assert_eq!(with("{}"), (DEFAULTS, vec![]));
        let (s, e) = with(
            r#"{"io.oomguard.oom-report":"stderr","io.oomguard.termination-message":"false"}"#,
        );
        assert!(
            e.is_empty() && s.stderr && !s.termination_message,
            "{s:?} {e:?}"
        );
        let (s, _) = with(r#"{"io.oomguard.oom-report":" none "}"#);
        assert!(!s.stderr);
    }

    #[test]
    fn malformed_annotations_name_the_key_and_keep_the_default() {
        for bad in [r#""150%""#, r#""-1""#, r#""abc""#, "7", r#""""#] {
            let (s, e) = with(&format!(
                r#"{{"io.oomguard.oom-report":{bad},"io.oomguard.termination-message":{bad}}}"#
            ));
            assert_eq!(s, DEFAULTS, "{bad}");
            assert_eq!(e.len(), 2, "{bad}: {e:?}");
            assert!(
                e[0].starts_with("annotation io.oomguard.oom-report: "),
                "{e:?}"
            );
            assert!(
                e[1].starts_with("annotation io.oomguard.termination-message: "),
                "{e:?}"
            );
        }
    }
}
