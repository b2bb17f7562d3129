//! The oomguard TOML files the handlers point at (`ConfigPath`): written when
//! absent, never over an operator's; removed by uninstall only when they still
//! hold exactly what install wrote.

use std::fs;
use std::path::Path;

use super::cli::{Action, Options};
use super::plan::{Change, Plan};
use super::snippets::{for_config_dir, CONFIG_FILES};

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

fn install(dir: &Path, plan: &mut Plan) -> Result<(), String> {
    for (name, text) in CONFIG_FILES {
        let path = dir.join(name);
        let want = for_config_dir(text, dir);
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
            Some(have) if have == want => plan.change(
                Change {
                    path,
                    before: Some(have),
                    after: None,
                    what: "as install wrote it".into(),
                    backup: false,
                },
                None,
            ),
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
