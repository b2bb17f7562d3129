//! containerd's config.toml: which schema it speaks, which files containerd
//! reads with it (`imports`), and which of them gets oomguard's handlers.
//!
//! containerd 1.x (config `version = 2`) merges imported files plugin by
//! plugin: a later file's `[plugins."io.containerd.grpc.v1.cri"...]` replaces
//! an earlier file's whole CRI section. So on schema 2 the handlers go into the
//! last file that configures CRI, and a drop-in is made only when no file does.
//! containerd 2.x (`version = 3`) merges every table key by key, so a drop-in
//! under the main file's `imports` glob is always safe there.
//!
//! A file without a `version` line is version 1 to containerd, and neither
//! 1.7 nor 2.1 applies CRI runtimes written with full plugin names there
//! (`containerd config dump` shows them dropped; 1.x decodes version 1 plugins
//! by short name): install refuses such a file and says how to migrate it.

use std::path::{Path, PathBuf};
use std::process::Command;

use toml_edit::DocumentMut;

use super::cli::{Action, Options};
use super::cri_tables as tables;
use super::files::read;
use super::plan::{Change, Plan};
use super::snippets::{for_config_dir, CONTAINERD_V2, CONTAINERD_V3};

/// The config schema the handlers are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// `version = 2`: containerd 1.6/1.7 (2.x migrates it).
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl Schema {
    pub fn cri_plugin(self) -> &'static str {
        match self {
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    pub fn snippet(self) -> &'static str {
        match self {
            Schema::V2 => CONTAINERD_V2,
            Schema::V3 => CONTAINERD_V3,
        }
    }
}

/// One config file containerd reads.
struct Loaded {
    path: PathBuf,
    text: String,
    doc: DocumentMut,
}

pub fn plan(opts: &Options, path: &Path, plan: &mut Plan) -> Result<(), String> {
    let Some(text) = read(path)? else {
        return match opts.action {
            Action::Install => install_new_main(opts, path, plan),
            Action::Uninstall => {
                plan.note(format!(
                    "{} does not exist: nothing to remove",
                    path.display()
                ));
                Ok(())
            }
        };
    };
    let doc = tables::parse(path, &text)?;
    let main = Loaded {
        path: path.to_path_buf(),
        text,
        doc,
    };
    let schema = schema_of(&main)?;
    let (files, drop_in) = imports::load_imports(main, schema, plan)?;
    if let Some(f) = files.iter().find(|f| cri_disabled(&f.doc)) {
        plan.note(format!(
            "{} disables CRI (disabled_plugins): the handlers work once it is enabled",
            f.path.display()
        ));
    }
    let wanted = tables::wanted(
        &for_config_dir(schema.snippet(), &opts.config_dir),
        schema.cri_plugin(),
    )?;
    match opts.action {
        Action::Install => install(opts, schema, files, drop_in, &wanted, plan),
        Action::Uninstall => uninstall(opts, schema, files, &wanted, plan),
    }
}

/// No config file: the canonical snippet for the containerd on PATH.
fn install_new_main(opts: &Options, path: &Path, plan: &mut Plan) -> Result<(), String> {
    let out = Command::new("containerd").arg("--version").output();
    let version = match &out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        _ => {
            return Err(format!(
                "{} does not exist, and there is no containerd on PATH to say which config \
                 version to write: create the file (containerd config default > {}) or put \
                 containerd on PATH",
                path.display(),
                path.display()
            ))
        }
    };
    let (schema, v) = schema_of_containerd(&version)?;
    let text = new_file(opts, schema, &[], path)?;
    plan.change(
        Change {
            path: path.to_path_buf(),
            before: None,
            after: Some(text),
            what: format!(
                "oomguard's CRI runtime handlers in a new config (schema of containerd {v} on PATH)"
            ),
            backup: false,
        },
        Some("containerd"),
    );
    Ok(())
}

/// The schema `containerd --version`'s output implies, and the version.
pub fn schema_of_containerd(output: &str) -> Result<(Schema, String), String> {
    // "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1",
    // "containerd github.com/containerd/containerd/v2 2.1.9+unknown",
    // "containerd containerd.io 1.7.22 7f7fdf5f..."
    let version = output
        .split_whitespace()
        .skip(1)
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .ok_or_else(|| format!("cannot read a version in `containerd --version`: {output:?}"))?;
    match version.split('.').next() {
        Some("1") => Ok((Schema::V2, version.to_string())),
        Some("2") => Ok((Schema::V3, version.to_string())),
        _ => Err(format!(
            "containerd {version} on PATH: only 1.x (config version 2) and 2.x (version 3) are known"
        )),
    }
}

fn schema_of(main: &Loaded) -> Result<Schema, String> {
    let file = main.path.display();
    match main.doc.get("version") {
        Some(v) => match v.as_integer() {
            Some(2) => Ok(Schema::V2),
            Some(3) => Ok(Schema::V3),
            Some(1) => Err(format!(
                "{file}: config version 1 (containerd 1.x before 1.3): migrate it first \
                 (containerd config migrate, or version = 2 with full plugin names)"
            )),
            Some(n) => Err(format!(
                "{file}: config version {n} is not one install knows (2: containerd 1.x, 3: 2.x)"
            )),
            None => Err(format!("{file}: version is not an integer")),
        },
        None => Err(format!(
            "{file} has no version line, so containerd reads it as config version 1, where \
             handlers written with full plugin names are not applied (containerd 1.x reads \
             version 1 plugins by short name, and 2.x's migration leaves them where they are): \
             migrate it first (containerd config migrate > NEW, check, replace), or add \
             version = 2 (containerd 1.x) or version = 3 (2.x) if its plugins are already named \
             in full, then run install again"
        )),
    }
}

fn cri_disabled(doc: &DocumentMut) -> bool {
    doc.get("disabled_plugins")
        .and_then(|d| d.as_array())
        .is_some_and(|a| {
            a.iter()
                .any(|v| matches!(v.as_str(), Some("cri" | "io.containerd.grpc.v1.cri")))
        })
}

enum Target {
    /// Edit this one of the loaded files.
    File(usize),
    /// Create this drop-in file.
    DropIn(PathBuf),
}

fn choose_target(
    files: &[Loaded],
    schema: Schema,
    drop_in: Option<PathBuf>,
    plan: &mut Plan,
) -> Target {
    let plugin = schema.cri_plugin();
    if let Some(d) = &drop_in {
        if let Some(i) = files.iter().position(|f| &f.path == d) {
            return Target::File(i);
        }
    }
    match schema {
        Schema::V3 => drop_in.map(Target::DropIn).unwrap_or(Target::File(0)),
        Schema::V2 => match files
            .iter()
            .rposition(|f| tables::defines_plugin(&f.doc, plugin))
        {
            Some(i) => {
                if i > 0 || drop_in.is_some() {
                    plan.note(format!(
                        "{} holds the CRI section containerd 1.x uses (it replaces, not merges, \
                         a CRI section of an earlier file): the handlers go there",
                        files[i].path.display()
                    ));
                }
                Target::File(i)
            }
            None => drop_in.map(Target::DropIn).unwrap_or(Target::File(0)),
        },
    }
}

fn install(
    opts: &Options,
    schema: Schema,
    mut files: Vec<Loaded>,
    drop_in: Option<PathBuf>,
    wanted: &toml_edit::Table,
    plan: &mut Plan,
) -> Result<(), String> {
    let plugin = schema.cri_plugin();
    let target = choose_target(&files, schema, drop_in, plan);
    let target_index = match target {
        Target::File(i) => Some(i),
        Target::DropIn(_) => None,
    };
    // Version 3 merges every file: a handler another file already defines
    // counts (and must agree). Version 2 uses the target's CRI section only.
    let mut wanted = wanted.clone();
    if schema == Schema::V3 {
        for (i, f) in files.iter().enumerate() {
            if Some(i) == target_index {
                continue;
            }
            for (name, want) in wanted.clone().iter() {
                match tables::runtime(&f.doc, plugin, name) {
                    Some(have) if tables::same(have, want) => {
                        plan.note(format!(
                            "{}: handler {name} already there",
                            f.path.display()
                        ));
                        wanted.remove(name);
                    }
                    Some(_) => {
                        return Err(format!(
                            "{}: handler {name} already exists and differs from what install \
                             writes: left alone; rename or remove it and run install again",
                            f.path.display()
                        ))
                    }
                    None => {}
                }
            }
        }
    }
    match target {
        Target::DropIn(path) => {
            if wanted.is_empty() && !opts.default {
                return Ok(());
            }
            let text = new_file(
                opts,
                schema,
                &skipped(schema, &opts.config_dir, &wanted)?,
                &path,
            )?;
            plan.change(
                Change {
                    path,
                    before: None,
                    after: Some(text),
                    what: format!(
                        "drop-in with handlers {} (imported by {})",
                        names(&wanted),
                        files[0].path.display()
                    ),
                    backup: false,
                },
                Some("containerd"),
            );
        }
        Target::File(i) => {
            let f = &mut files[i];
            let added = tables::add(&mut f.doc, &f.path, plugin, &wanted, opts.default)?;
            let text = f.doc.to_string();
            tables::verify(&text, &f.path, plugin, &wanted, opts.default)?;
            if !added.present.is_empty() {
                plan.note(format!(
                    "{}: handlers {} already there",
                    f.path.display(),
                    added.present.join(", ")
                ));
            }
            let mut what = Vec::new();
            if !added.added.is_empty() {
                what.push(format!("added handlers {}", added.added.join(", ")));
            }
            if let Some(was) = &added.default_was {
                what.push(format!("default runtime oomguard (was {was})"));
            }
            plan.change(
                Change {
                    path: f.path.clone(),
                    before: Some(f.text.clone()),
                    after: Some(text),
                    what: what.join("; "),
                    backup: true,
                },
                Some("containerd"),
            );
        }
    }
    Ok(())
}

/// The names of the canonical handlers not in `wanted` (present elsewhere).
fn skipped(
    schema: Schema,
    config_dir: &Path,
    wanted: &toml_edit::Table,
) -> Result<Vec<String>, String> {
    let all = tables::wanted(
        &for_config_dir(schema.snippet(), config_dir),
        schema.cri_plugin(),
    )?;
    Ok(all
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !wanted.contains_key(k))
        .collect())
}

fn names(t: &toml_edit::Table) -> String {
    t.iter().map(|(k, _)| k).collect::<Vec<_>>().join(", ")
}

/// A new config file (main or drop-in): the canonical snippet, less the
/// handlers in `skip`, with the default set if asked.
fn new_file(
    opts: &Options,
    schema: Schema,
    skip: &[String],
    path: &Path,
) -> Result<String, String> {
    let text = for_config_dir(schema.snippet(), &opts.config_dir);
    let plugin = schema.cri_plugin();
    if skip.is_empty() && !opts.default {
        return Ok(text);
    }
    let mut doc = tables::parse(path, &text)?;
    let mut keep = tables::wanted(&text, plugin)?;
    for name in skip {
        keep.remove(name);
    }
    // Take the skipped handlers out of the snippet, then let `add` set the
    // default as it does in an operator's file.
    if let Some(runtimes) = doc
        .get_mut("plugins")
        .and_then(|p| p.get_mut(plugin))
        .and_then(|p| p.get_mut("containerd"))
        .and_then(|c| c.get_mut("runtimes"))
        .and_then(|r| r.as_table_mut())
    {
        for name in skip {
            runtimes.remove(name);
        }
    }
    tables::add(&mut doc, path, plugin, &keep, opts.default)?;
    let text = doc.to_string();
    tables::verify(&text, path, plugin, &keep, opts.default)?;
    Ok(text)
}

fn uninstall(
    opts: &Options,
    schema: Schema,
    mut files: Vec<Loaded>,
    wanted: &toml_edit::Table,
    plan: &mut Plan,
) -> Result<(), String> {
    let plugin = schema.cri_plugin();
    let canonical = for_config_dir(schema.snippet(), &opts.config_dir);
    let mut found = false;
    for f in files.iter_mut() {
        let removed = tables::remove(&mut f.doc, plugin, wanted)
            .map_err(|e| format!("{}: {e}", f.path.display()))?;
        for name in &removed.kept {
            plan.note(format!(
                "{}: kept handler {name}: changed since install wrote it",
                f.path.display()
            ));
        }
        if removed.removed.is_empty() && removed.default_restored.is_none() {
            continue;
        }
        found = true;
        let mut what = Vec::new();
        if !removed.removed.is_empty() {
            what.push(format!("removed handlers {}", removed.removed.join(", ")));
        }
        if let Some(was) = &removed.default_restored {
            what.push(format!("default runtime back to {was}"));
        }
        // A file left with nothing but its version line goes (install made
        // it, or it said nothing else).
        let after = (!tables::is_empty_but_version(&f.doc)).then(|| f.doc.to_string());
        plan.change(
            Change {
                path: f.path.clone(),
                before: Some(f.text.clone()),
                after,
                what: what.join("; "),
                backup: f.text != canonical,
            },
            Some("containerd"),
        );
    }
    if !found {
        plan.note(format!(
            "{}: no oomguard handlers to remove",
            files[0].path.display()
        ));
    }
    Ok(())
}

mod imports;
#[cfg(test)]
mod tests;
