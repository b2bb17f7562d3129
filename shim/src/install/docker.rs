//! Docker's daemon.json: the canonical `runtimes` entries added or removed,
//! every other key kept in its place (serde_json with `preserve_order`), the
//! file's indentation reused.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use super::cli::Action;
use super::files::read;
use super::plan::{Change, Plan};
use super::snippets::{for_config_dir, DAEMON_JSON};

pub fn plan(action: Action, path: &Path, config_dir: &Path, plan: &mut Plan) -> Result<(), String> {
    let before = read(path)?;
    let after = match action {
        Action::Install => install(path, before.as_deref(), config_dir, plan)?,
        Action::Uninstall => match &before {
            Some(text) => uninstall(path, text, config_dir, plan)?,
            None => {
                plan.note(format!(
                    "{} does not exist: nothing to remove",
                    path.display()
                ));
                return Ok(());
            }
        },
    };
    let what = match action {
        Action::Install => "added the oomguard runtimes",
        Action::Uninstall => "removed the oomguard runtimes",
    };
    plan.change(
        Change {
            path: path.to_path_buf(),
            before,
            after,
            what: what.into(),
            backup: true,
        },
        Some("docker"),
    );
    Ok(())
}

/// The runtimes install writes, by name.
fn wanted(config_dir: &Path) -> Result<Map<String, Value>, String> {
    let canonical: Value = serde_json::from_str(&for_config_dir(DAEMON_JSON, config_dir))
        .map_err(|e| format!("internal: the canonical daemon.json: {e}"))?;
    match canonical.get("runtimes") {
        Some(Value::Object(m)) => Ok(m.clone()),
        _ => Err("internal: the canonical daemon.json has no runtimes".into()),
    }
}

fn parse(path: &Path, text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{}: not a JSON object", path.display())),
        Err(e) => Err(format!("{}: cannot parse: {e}", path.display())),
    }
}

fn install(
    path: &Path,
    before: Option<&str>,
    config_dir: &Path,
    plan: &mut Plan,
) -> Result<Option<String>, String> {
    let Some(text) = before else {
        return Ok(Some(for_config_dir(DAEMON_JSON, config_dir)));
    };
    let mut root = parse(path, text)?;
    let runtimes = root
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(runtimes) = runtimes else {
        return Err(format!("{}: \"runtimes\" is not an object", path.display()));
    };
    let mut present = Vec::new();
    for (name, want) in wanted(config_dir)? {
        match runtimes.get(&name) {
            None => {
                runtimes.insert(name, want);
            }
            Some(have) if *have == want => present.push(name),
            Some(have) => {
                return Err(format!(
                    "{}: runtime \"{name}\" already exists and differs from what install writes \
                     ({have} instead of {want}): left alone; rename or remove it and run install again",
                    path.display()
                ))
            }
        }
    }
    if !present.is_empty() {
        plan.note(format!(
            "{}: runtimes {} already there",
            path.display(),
            present.join(", ")
        ));
    }
    render(path, text, &Value::Object(root)).map(Some)
}

fn uninstall(
    path: &Path,
    text: &str,
    config_dir: &Path,
    plan: &mut Plan,
) -> Result<Option<String>, String> {
    let mut root = parse(path, text)?;
    let Some(Value::Object(runtimes)) = root.get_mut("runtimes") else {
        return Ok(Some(text.to_string()));
    };
    for (name, want) in wanted(config_dir)? {
        match runtimes.get(&name) {
            Some(have) if *have == want => {
                runtimes.shift_remove(&name);
            }
            Some(_) => plan.note(format!(
                "{}: kept runtime \"{name}\": changed since install wrote it",
                path.display()
            )),
            None => {}
        }
    }
    if runtimes.is_empty() {
        root.shift_remove("runtimes");
    }
    if root.is_empty() {
        // Nothing left but "{}": Docker without a daemon.json is the same.
        return Ok(None);
    }
    render(path, text, &Value::Object(root)).map(Some)
}

/// Pretty JSON with the indentation `original` uses (two spaces if it shows
/// none), ending in a newline as the original does.
fn render(path: &Path, original: &str, value: &Value) -> Result<String, String> {
    let indent = original
        .lines()
        .skip(1)
        .find(|l| !l.trim().is_empty())
        .map(|l| &l[..l.len() - l.trim_start().len()])
        .filter(|i| !i.is_empty())
        .unwrap_or("  ");
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    value
        .serialize(&mut ser)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::from_utf8(out).map_err(|e| format!("{}: {e}", path.display()))?;
    if original.ends_with('\n') || original.is_empty() {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = r#"{
    "log-driver": "json-file",
    "log-opts": {
        "max-size": "10m",
        "max-file": "3"
    },
    "runtimes": {
        "crun": {
            "path": "/usr/bin/crun"
        }
    },
    "storage-driver": "overlay2"
}
"#;

    fn dir() -> &'static Path {
        Path::new("/etc/oomguard")
    }

    #[test]
    fn install_keeps_every_key_in_place_and_uninstall_restores_the_bytes() {
        let p = Path::new("/etc/docker/daemon.json");
        let mut plan = Plan::default();
        let after = install(p, Some(OPERATOR), dir(), &mut plan)
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&after).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["log-driver", "log-opts", "runtimes", "storage-driver"]
        );
        let names: Vec<&String> = v["runtimes"].as_object().unwrap().keys().collect();
        assert_eq!(
            names,
            ["crun", "oomguard", "oomguard-runc", "oomguard-runsc"]
        );
        assert_eq!(
            v["runtimes"]["oomguard-runsc"]["options"]["ConfigPath"],
            "/etc/oomguard/runsc.toml"
        );
        assert!(
            after.contains("\n    \"log-opts\": {\n        \"max-size\""),
            "{after}"
        );
        // Idempotent.
        let again = install(p, Some(&after), dir(), &mut plan).unwrap().unwrap();
        assert_eq!(again, after);
        assert!(plan.notes[0].contains("already there"), "{:?}", plan.notes);
        // Uninstall gives the operator's bytes back.
        let back = uninstall(p, &after, dir(), &mut plan).unwrap().unwrap();
        assert_eq!(back, OPERATOR);
    }

    #[test]
    fn missing_file_gets_the_canonical_one_and_uninstall_removes_it() {
        let p = Path::new("/etc/docker/daemon.json");
        let mut plan = Plan::default();
        let after = install(p, None, Path::new("/opt/og"), &mut plan)
            .unwrap()
            .unwrap();
        assert_eq!(after, for_config_dir(DAEMON_JSON, Path::new("/opt/og")));
        let back = uninstall(p, &after, Path::new("/opt/og"), &mut plan).unwrap();
        assert_eq!(back, None);
    }

    #[test]
    fn conflicts_and_bad_files_are_errors() {
        let p = Path::new("/etc/docker/daemon.json");
        let mut plan = Plan::default();
        let mine = r#"{"runtimes": {"oomguard": {"path": "/usr/local/bin/other"}}}"#;
        let e = install(p, Some(mine), dir(), &mut plan).unwrap_err();
        assert!(e.contains("runtime \"oomguard\" already exists"), "{e}");
        let e = install(p, Some("{\n  \"a\": 1,\n  \"b\" 2\n}\n"), dir(), &mut plan).unwrap_err();
        assert!(
            e.contains("/etc/docker/daemon.json: cannot parse") && e.contains("line 3"),
            "{e}"
        );
        let e = install(p, Some("[]"), dir(), &mut plan).unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = install(p, Some(r#"{"runtimes": []}"#), dir(), &mut plan).unwrap_err();
        assert!(e.contains("\"runtimes\" is not an object"), "{e}");
    }

    #[test]
    fn uninstall_keeps_a_changed_runtime() {
        let p = Path::new("/etc/docker/daemon.json");
        let mut plan = Plan::default();
        let after = install(p, Some("{}\n"), dir(), &mut plan).unwrap().unwrap();
        let changed = after.replace("runsc.toml", "my-runsc.toml");
        let back = uninstall(p, &changed, dir(), &mut plan).unwrap().unwrap();
        let v: Value = serde_json::from_str(&back).unwrap();
        let names: Vec<&String> = v["runtimes"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["oomguard-runsc"]);
        assert!(plan
            .notes
            .iter()
            .any(|n| n.contains("kept runtime \"oomguard-runsc\"")));
    }
}
