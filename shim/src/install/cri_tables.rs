//! The edits inside one containerd config document (toml_edit, so the rest of
//! the file keeps its bytes): oomguard's runtime tables under
//! `plugins.PLUGIN.containerd.runtimes`, and `default_runtime_name`.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, Value};

/// The comment install leaves on a `default_runtime_name` it set; uninstall
/// reads the old value back from it.
pub const DEFAULT_MARKER: &str = "# set by containerd-shim-oomguard-v2 install; was ";
/// The handler `--default` makes the default.
pub const DEFAULT_HANDLER: &str = "oomguard";

/// What `add` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    pub added: Vec<String>,
    pub present: Vec<String>,
    /// `Some(old value or "unset")` when it set the default runtime.
    pub default_was: Option<String>,
}

/// What `remove` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub removed: Vec<String>,
    /// Handlers left in place because they differ from what install writes.
    pub kept: Vec<String>,
    /// `Some(value restored or "unset")` when it undid install's default.
    pub default_restored: Option<String>,
}

pub fn parse(path: &Path, text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>().map_err(|e| {
        format!(
            "{}: cannot parse: {}",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

fn path_to(plugin: &str) -> [&str; 3] {
    ["plugins", plugin, "containerd"]
}

/// The runtime tables of the canonical snippet (`text`), by handler name.
pub fn wanted(text: &str, plugin: &str) -> Result<Table, String> {
    let doc = parse(Path::new("(canonical snippet)"), text)?;
    doc.get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("containerd"))
        .and_then(|c| c.get("runtimes"))
        .and_then(Item::as_table)
        .cloned()
        .ok_or_else(|| format!("internal: the canonical snippet has no {plugin} runtimes"))
}

/// Does the document configure `plugin` at all (any key under it)?
pub fn defines_plugin(doc: &DocumentMut, plugin: &str) -> bool {
    doc.get("plugins").and_then(|p| p.get(plugin)).is_some()
}

/// The runtime `name` under `plugin`, if the document has one.
pub fn runtime<'a>(doc: &'a DocumentMut, plugin: &str, name: &str) -> Option<&'a Item> {
    doc.get("plugins")?
        .get(plugin)?
        .get("containerd")?
        .get("runtimes")?
        .get(name)
}

/// Two runtime entries mean the same (whatever their layout and comments).
pub fn same(a: &Item, b: &Item) -> bool {
    fn plain(item: &Item) -> Option<toml::Value> {
        let mut doc = DocumentMut::new();
        let mut item = item.clone();
        if let Item::Table(t) = &mut item {
            t.set_implicit(false);
        }
        doc.insert("x", item);
        toml::from_str::<toml::Table>(&doc.to_string())
            .ok()?
            .remove("x")
    }
    matches!((plain(a), plain(b)), (Some(x), Some(y)) if x == y)
}

/// Adds the `wanted` runtime tables (those not there yet) after the document's
/// existing runtimes, and with `set_default` makes "oomguard" the default.
/// An entry of the same name that differs is an error (nothing is changed).
pub fn add(
    doc: &mut DocumentMut,
    file: &Path,
    plugin: &str,
    wanted: &Table,
    set_default: bool,
) -> Result<Added, String> {
    let mut result = Added::default();
    for (name, want) in wanted.iter() {
        match runtime(doc, plugin, name) {
            None => result.added.push(name.to_string()),
            Some(have) if same(have, want) => result.present.push(name.to_string()),
            Some(_) => {
                return Err(format!(
                    "{}: [plugins.\"{plugin}\".containerd.runtimes.{name}] already exists and \
                     differs from what install writes: left alone; rename or remove it and run \
                     install again",
                    file.display()
                ))
            }
        }
    }
    let current_default = doc
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("containerd"))
        .and_then(|c| c.get("default_runtime_name"));
    let change_default =
        set_default && current_default.and_then(Item::as_str) != Some(DEFAULT_HANDLER);
    if let Some(item) = current_default.filter(|_| change_default) {
        if item.as_value().is_none() {
            return Err(format!(
                "{}: plugins.\"{plugin}\".containerd.default_runtime_name is not a value",
                file.display()
            ));
        }
    }
    if result.added.is_empty() && !change_default {
        return Ok(result);
    }

    // New tables go right after the last table of the deepest existing
    // ancestor (next to the runtimes already there); later tables move down.
    let root = doc.as_table_mut();
    let path = path_to(plugin);
    let after = anchor_position(root, &path);
    let containerd_needs_header =
        change_default && !matches!(lookup(root, &path), Some(t) if !t.is_implicit());
    let mut count: usize = result
        .added
        .iter()
        .filter_map(|n| wanted.get(n).and_then(Item::as_table))
        .map(count_tables)
        .sum();
    count += usize::from(containerd_needs_header);
    shift_positions(root, after, count);
    let mut next = after + 1;

    let containerd = table_at(root, &path, file)?;
    if containerd_needs_header {
        containerd.set_implicit(false);
        containerd.set_position(next);
        next += 1;
    }
    if change_default {
        // The old value with its trailing comment, to be read back by remove.
        let (was, record) = match containerd
            .get("default_runtime_name")
            .and_then(Item::as_value)
        {
            Some(v) => {
                let value = v.clone().decorated("", "").to_string();
                let comment = v.decor().suffix().and_then(|s| s.as_str()).unwrap_or("");
                (value.clone(), format!("{value}{comment}"))
            }
            None => ("unset".to_string(), "unset".to_string()),
        };
        let mut v = Value::from(DEFAULT_HANDLER);
        v.decor_mut().set_prefix(" ");
        v.decor_mut()
            .set_suffix(format!(" {DEFAULT_MARKER}{record}"));
        match containerd.get_mut("default_runtime_name") {
            Some(item) => *item = Item::Value(v),
            None => {
                let indent = key_indent(containerd);
                containerd.insert("default_runtime_name", Item::Value(v));
                if let Some(mut key) = containerd.key_mut("default_runtime_name") {
                    key.leaf_decor_mut().set_prefix(indent);
                }
            }
        }
        result.default_was = Some(was);
    }
    if !result.added.is_empty() {
        let runtimes = table_at(containerd, &["runtimes"], file)?;
        for name in &result.added {
            let Some(Item::Table(want)) = wanted.get(name) else {
                continue;
            };
            let mut t = want.clone();
            assign_positions(&mut t, &mut next);
            runtimes.insert(name, Item::Table(t));
        }
    }
    Ok(result)
}

/// Removes the runtime tables that are exactly `wanted`'s, undoes a default
/// install set, and drops the tables that only existed to hold them.
pub fn remove(doc: &mut DocumentMut, plugin: &str, wanted: &Table) -> Result<Removed, String> {
    let mut result = Removed::default();
    let root = doc.as_table_mut();
    let path = path_to(plugin);
    let Some(containerd) = lookup_mut(root, &path) else {
        return Ok(result);
    };
    if let Some(Item::Table(runtimes)) = containerd.get_mut("runtimes") {
        for (name, want) in wanted.iter() {
            match runtimes.get(name) {
                Some(have) if same(have, want) => {
                    runtimes.remove(name);
                    result.removed.push(name.to_string());
                }
                Some(_) => result.kept.push(name.to_string()),
                None => {}
            }
        }
    }
    let marked = containerd
        .get("default_runtime_name")
        .and_then(Item::as_value)
        .filter(|v| v.as_str() == Some(DEFAULT_HANDLER))
        .and_then(|v| v.decor().suffix())
        .and_then(|s| s.as_str())
        .and_then(|s| s.trim_start().strip_prefix(DEFAULT_MARKER))
        .map(str::to_string);
    if let Some(record) = marked {
        if record == "unset" {
            containerd.remove("default_runtime_name");
            if containerd.iter().all(|(_, item)| item.is_table()) {
                containerd.set_implicit(true);
            }
            result.default_restored = Some(record);
        } else {
            // VALUE and the comment that followed it, parsed as TOML does.
            let old = format!("x = {record}\n")
                .parse::<DocumentMut>()
                .ok()
                .and_then(|d| d.get("x").and_then(Item::as_value).cloned())
                .ok_or_else(|| {
                    format!("default_runtime_name: cannot read the old value back from {record:?}")
                })?;
            let value = old.clone().decorated("", "").to_string();
            let mut old = old;
            old.decor_mut().set_prefix(" ");
            if let Some(item) = containerd.get_mut("default_runtime_name") {
                *item = Item::Value(old);
            }
            result.default_restored = Some(value);
        }
    }
    // Empty tables that print no header (install made them to hold its own).
    let full = [path.as_slice(), &["runtimes"]].concat();
    for depth in (1..=full.len()).rev() {
        let (parent_path, key) = (&full[..depth - 1], full[depth - 1]);
        let Some(parent) = lookup_mut(root, parent_path) else {
            continue;
        };
        if matches!(parent.get(key), Some(Item::Table(t)) if t.is_empty() && t.is_implicit()) {
            parent.remove(key);
        }
    }
    Ok(result)
}

/// Does the document hold anything but its `version` line and blank lines?
pub fn is_empty_but_version(doc: &DocumentMut) -> bool {
    doc.to_string()
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("version"))
        && doc.iter().all(|(k, _)| k == "version")
}

/// Post-condition of an install edit: the file as containerd will read it has
/// every wanted handler (and the default), with oomguard's runtime type.
pub fn verify(
    text: &str,
    file: &Path,
    plugin: &str,
    wanted: &Table,
    default: bool,
) -> Result<(), String> {
    let bug = |what: String| {
        format!(
            "{}: internal error, nothing written: {what}",
            file.display()
        )
    };
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| bug(format!("the edited file does not parse: {e}")))?;
    let containerd = doc
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("containerd"));
    for (name, want) in wanted.iter() {
        let rt = containerd
            .and_then(|c| c.get("runtimes"))
            .and_then(|r| r.get(name))
            .and_then(|r| r.get("runtime_type"))
            .and_then(|t| t.as_str());
        let want_rt = want.get("runtime_type").and_then(|t| t.as_str());
        if rt.is_none() || rt != want_rt {
            return Err(bug(format!("runtime {name} missing after the edit")));
        }
    }
    let drn = containerd
        .and_then(|c| c.get("default_runtime_name"))
        .and_then(|d| d.as_str());
    if default && drn != Some(DEFAULT_HANDLER) {
        return Err(bug("default_runtime_name not set after the edit".into()));
    }
    Ok(())
}

fn lookup<'a>(root: &'a Table, path: &[&str]) -> Option<&'a Table> {
    let mut t = root;
    for key in path {
        t = t.get(key)?.as_table()?;
    }
    Some(t)
}

fn lookup_mut<'a>(root: &'a mut Table, path: &[&str]) -> Option<&'a mut Table> {
    let mut t = root;
    for key in path {
        t = t.get_mut(key)?.as_table_mut()?;
    }
    Some(t)
}

/// The table at `path`, made (implicit, so without a header of its own)
/// where missing.
fn table_at<'a>(root: &'a mut Table, path: &[&str], file: &Path) -> Result<&'a mut Table, String> {
    let mut t = root;
    for (i, key) in path.iter().enumerate() {
        if !t.contains_key(key) {
            let mut new = Table::new();
            new.set_implicit(true);
            t.insert(key, Item::Table(new));
        }
        t = match t.get_mut(key) {
            Some(Item::Table(next)) => next,
            _ => {
                return Err(format!(
                    "{}: {} is not a [table] (an inline table or a value): install cannot add \
                     to it; write it as [table] sections first",
                    file.display(),
                    path[..=i].join(".")
                ))
            }
        };
    }
    Ok(t)
}

/// The last position of a table along `path` or under the deepest one that
/// exists (or of the whole document).
fn anchor_position(root: &Table, path: &[&str]) -> usize {
    let mut best = max_position(root);
    let mut t = root;
    for key in path.iter().chain(std::iter::once(&"runtimes")) {
        match t.get(key) {
            Some(Item::Table(next)) => {
                t = next;
                if let Some(p) = max_position(t) {
                    best = Some(p);
                }
            }
            _ => break,
        }
    }
    best.unwrap_or(0)
}

fn max_position(t: &Table) -> Option<usize> {
    let mut best = if t.is_implicit() { None } else { t.position() };
    for (_, item) in t.iter() {
        let sub = match item {
            Item::Table(s) => max_position(s),
            Item::ArrayOfTables(a) => a.iter().filter_map(max_position).max(),
            _ => None,
        };
        best = best.max(sub);
    }
    best
}

fn shift_positions(t: &mut Table, after: usize, by: usize) {
    if let Some(p) = t.position() {
        if p > after {
            t.set_position(p + by);
        }
    }
    for (_, item) in t.iter_mut() {
        match item {
            Item::Table(s) => shift_positions(s, after, by),
            Item::ArrayOfTables(a) => a.iter_mut().for_each(|s| shift_positions(s, after, by)),
            _ => {}
        }
    }
}

fn count_tables(t: &Table) -> usize {
    1 + t
        .iter()
        .filter_map(|(_, i)| i.as_table())
        .map(count_tables)
        .sum::<usize>()
}

fn assign_positions(t: &mut Table, next: &mut usize) {
    t.set_position(*next);
    *next += 1;
    for (_, item) in t.iter_mut() {
        if let Item::Table(s) = item {
            assign_positions(s, next);
        }
    }
}

/// The indentation of the table's first key (new keys line up with it).
fn key_indent(t: &Table) -> String {
    t.iter()
        .find(|(_, i)| i.is_value())
        .and_then(|(k, _)| t.key(k))
        .and_then(|k| k.leaf_decor().prefix())
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_string()
}
