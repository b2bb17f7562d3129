//! Which files containerd reads with a config: its `imports`, resolved and
//! expanded as containerd does (a pattern when it has a `*`; relative to the
//! importing file, except that 1.x resolves a relative pattern against its
//! own working directory), followed recursively; and where a drop-in goes.

use std::collections::{HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};

use super::{Loaded, Schema};
use crate::install::cri_tables as tables;
use crate::install::files::read;
use crate::install::plan::Plan;

/// Every file containerd reads (the main one first, then imports in
/// containerd's order), and the drop-in file the main file's imports glob
/// asks for, if any.
pub(super) fn load_imports(
    main: Loaded,
    schema: Schema,
    plan: &mut Plan,
) -> Result<(Vec<Loaded>, Option<PathBuf>), String> {
    let drop_in = drop_in_path(&main, schema, plan);
    let mut seen: HashSet<PathBuf> = HashSet::from([main.path.clone()]);
    let mut pending: VecDeque<PathBuf> = imports(&main, schema, plan)?.into();
    let mut files = vec![main];
    while let Some(path) = pending.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(text) = read(&path)? else {
            plan.note(format!(
                "{}: imports {}, which does not exist (containerd will not start)",
                files[0].path.display(),
                path.display()
            ));
            continue;
        };
        let doc = tables::parse(&path, &text)?;
        let f = Loaded { path, text, doc };
        pending.extend(imports(&f, schema, plan)?);
        files.push(f);
    }
    Ok((files, drop_in))
}

fn is_glob(s: &str) -> bool {
    // containerd treats an import as a pattern when it has a '*'.
    s.contains('*')
}

/// A file's `imports`, resolved as containerd resolves them.
fn imports(f: &Loaded, schema: Schema, plan: &mut Plan) -> Result<Vec<PathBuf>, String> {
    let Some(item) = f.doc.get("imports") else {
        return Ok(Vec::new());
    };
    let Some(list) = item.as_array() else {
        return Err(format!("{}: imports is not an array", f.path.display()));
    };
    let dir = f.path.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for v in list.iter() {
        let Some(s) = v.as_str() else {
            return Err(format!(
                "{}: imports has a non-string entry",
                f.path.display()
            ));
        };
        let p = Path::new(s);
        if !is_glob(s) {
            out.push(if p.is_absolute() {
                clean(p)
            } else {
                clean(&dir.join(p))
            });
            continue;
        }
        let pattern = match (p.is_absolute(), schema) {
            (true, _) => clean(p),
            (false, Schema::V3) => clean(&dir.join(p)),
            (false, Schema::V2) => {
                plan.note(format!(
                    "{}: imports {s:?} is relative: containerd 1.x resolves it against its own \
                     working directory, so install does not follow it",
                    f.path.display()
                ));
                continue;
            }
        };
        let matches = glob::glob(&pattern.to_string_lossy())
            .map_err(|e| format!("{}: imports {s:?}: {e}", f.path.display()))?;
        out.extend(matches.flatten());
    }
    Ok(out)
}

/// Lexically cleaned path ("a/./b/../c" -> "a/c"), as Go's filepath.Clean.
fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The drop-in file for the main file's first `imports` glob of the form
/// DIR/PREFIX*SUFFIX: DIR/PREFIXoomguardSUFFIX (e.g. conf.d/oomguard.toml).
pub(super) fn drop_in_path(main: &Loaded, schema: Schema, plan: &mut Plan) -> Option<PathBuf> {
    let list = main.doc.get("imports")?.as_array()?;
    let dir = main.path.parent().unwrap_or(Path::new("/"));
    for s in list
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|s| is_glob(s))
    {
        let p = Path::new(s);
        let p = match (p.is_absolute(), schema) {
            (true, _) => clean(p),
            (false, Schema::V3) => clean(&dir.join(p)),
            (false, Schema::V2) => continue,
        };
        let (Some(parent), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str()))
        else {
            continue;
        };
        let meta = |s: &str| s.contains(['*', '?', '[', ']', '\\']);
        if meta(&parent.to_string_lossy()) || name.matches('*').count() != 1 {
            continue;
        }
        let Some((prefix, suffix)) = name.split_once('*') else {
            continue;
        };
        if meta(prefix) || meta(suffix) {
            continue;
        }
        return Some(parent.join(format!("{prefix}oomguard{suffix}")));
    }
    if list.iter().filter_map(|v| v.as_str()).any(is_glob) {
        plan.note(format!(
            "{}: no imports glob of the form DIR/PREFIX*SUFFIX to put a drop-in under",
            main.path.display()
        ));
    }
    None
}
