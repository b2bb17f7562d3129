//! The changes a run decided on, all computed (and every file parsed) before
//! anything is written; then shown as a diff (`--dry-run`) or applied, each
//! changed file backed up first and replaced atomically.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One file's new content (`after: None` removes it).
#[derive(Debug)]
pub struct Change {
    pub path: PathBuf,
    pub before: Option<String>,
    pub after: Option<String>,
    /// What the change does, for the report.
    pub what: String,
    /// Keep a copy of the old content (not needed for a file removed because
    /// it held exactly what install writes).
    pub backup: bool,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// What was found already done or left alone, for the report.
    pub notes: Vec<String>,
    /// Directories to remove once the changes are applied, if empty.
    pub remove_dirs_if_empty: Vec<PathBuf>,
    /// Daemons whose configuration changed ("containerd", "docker").
    pub restart: BTreeSet<&'static str>,
}

impl Plan {
    /// Records a change unless it changes nothing.
    pub fn change(&mut self, change: Change, daemon: Option<&'static str>) {
        if change.before == change.after {
            return;
        }
        if let Some(d) = daemon {
            self.restart.insert(d);
        }
        self.changes.push(change);
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The unified diff of every change (`--dry-run`).
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let name = c.path.display().to_string();
            let (a, b) = match (&c.before, &c.after) {
                (None, _) => ("/dev/null".to_string(), name),
                (_, None) => (name, "/dev/null".to_string()),
                _ => (name.clone(), name),
            };
            let before = c.before.as_deref().unwrap_or("");
            let after = c.after.as_deref().unwrap_or("");
            let diff = similar::TextDiff::from_lines(before, after);
            out.push_str(
                &diff
                    .unified_diff()
                    .context_radius(3)
                    .missing_newline_hint(true)
                    .header(&a, &b)
                    .to_string(),
            );
        }
        out
    }

    /// Writes every change (backups first); returns the report lines.
    pub fn apply(&self) -> Result<Vec<String>, String> {
        let stamp = timestamp(SystemTime::now());
        let mut done = Vec::new();
        for c in &self.changes {
            // A config that is a symlink (to a file a tool manages) keeps the
            // link: the file it points at is what changes.
            let target = match &c.before {
                Some(_) => fs::canonicalize(&c.path).unwrap_or_else(|_| c.path.clone()),
                None => c.path.clone(),
            };
            let backup = match (&c.before, c.backup) {
                (Some(_), true) => Some(backup(&target, &stamp).map_err(|e| {
                    format!(
                        "{}: backup failed: {e}; not changed{}",
                        c.path.display(),
                        so_far(&done)
                    )
                })?),
                _ => None,
            };
            let result = match &c.after {
                Some(text) => write_atomic(&target, text),
                None => fs::remove_file(&c.path),
            };
            result.map_err(|e| format!("{}: {e}{}", c.path.display(), so_far(&done)))?;
            let verb = match (&c.before, &c.after) {
                (None, _) => "created",
                (_, None) => "removed",
                _ => "changed",
            };
            let mut line = format!("{verb} {}: {}", c.path.display(), c.what);
            if let Some(b) = backup {
                line.push_str(&format!(" (backup: {})", b.display()));
            }
            done.push(line);
        }
        for dir in &self.remove_dirs_if_empty {
            let empty = fs::read_dir(dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if empty && fs::remove_dir(dir).is_ok() {
                done.push(format!("removed {} (empty)", dir.display()));
            }
        }
        Ok(done)
    }
}

fn so_far(done: &[String]) -> String {
    if done.is_empty() {
        String::new()
    } else {
        format!(" (already done: {})", done.join("; "))
    }
}

/// Copies `path` to `path.oomguard-backup-STAMP` (a free name), keeping its
/// mode.
fn backup(path: &Path, stamp: &str) -> std::io::Result<PathBuf> {
    let base = format!("{}.oomguard-backup-{stamp}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    fs::copy(path, &target)?;
    Ok(target)
}

/// Replaces `path` by a file holding `text`: written beside it, synced, then
/// renamed over it, so a reader sees the old or the new file, never half of
/// one. An existing file's mode and owner carry over; a new one gets 0644
/// (and its parent directories are made).
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let old = fs::metadata(path).ok();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.oomguard-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        match &old {
            Some(m) => {
                f.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))?;
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            }
            None => f.set_permissions(fs::Permissions::from_mode(0o644))?,
        }
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `YYYYmmddTHHMMSSZ` (UTC) for backup names.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = ((secs / 86400) as i64, secs % 86400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let at = |s| timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_733_222_096), "20241203T103456Z");
        assert_eq!(at(4_102_444_799), "20991231T235959Z");
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("og-plan-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn apply_backs_up_keeps_mode_and_removes() {
        let d = tmpdir("apply");
        let edited = d.join("config.toml");
        fs::write(&edited, "old\n").unwrap();
        fs::set_permissions(&edited, fs::Permissions::from_mode(0o600)).unwrap();
        let gone = d.join("sub/gone.toml");
        fs::create_dir_all(gone.parent().unwrap()).unwrap();
        fs::write(&gone, "x\n").unwrap();
        let mut plan = Plan::default();
        plan.change(
            Change {
                path: edited.clone(),
                before: Some("old\n".into()),
                after: Some("new\n".into()),
                what: "edited".into(),
                backup: true,
            },
            Some("containerd"),
        );
        plan.change(
            Change {
                path: d.join("new/created.toml"),
                before: None,
                after: Some("c\n".into()),
                what: "created".into(),
                backup: true,
            },
            None,
        );
        plan.change(
            Change {
                path: gone.clone(),
                before: Some("x\n".into()),
                after: None,
                what: "removed".into(),
                backup: false,
            },
            None,
        );
        plan.change(
            Change {
                path: d.join("same"),
                before: Some("s".into()),
                after: Some("s".into()),
                what: "nothing".into(),
                backup: true,
            },
            Some("docker"),
        );
        plan.remove_dirs_if_empty
            .push(gone.parent().unwrap().into());
        assert_eq!(plan.changes.len(), 3);
        assert_eq!(
            plan.restart.iter().copied().collect::<Vec<_>>(),
            ["containerd"]
        );
        let diff = plan.diff();
        assert!(diff.contains("-old\n+new\n"), "{diff}");
        assert!(diff.contains("--- /dev/null"), "{diff}");

        let report = plan.apply().unwrap();
        assert_eq!(report.len(), 4, "{report:?}");
        assert_eq!(fs::read_to_string(&edited).unwrap(), "new\n");
        let mode = fs::metadata(&edited).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let backups: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(".oomguard-backup-")
            })
            .collect();
        assert_eq!(backups.len(), 1);
        assert_eq!(fs::read_to_string(backups[0].path()).unwrap(), "old\n");
        assert_eq!(
            fs::read_to_string(d.join("new/created.toml")).unwrap(),
            "c\n"
        );
        assert!(!gone.exists() && !gone.parent().unwrap().exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlinked_config_keeps_its_link() {
        let d = tmpdir("symlink");
        let real = d.join("managed/config.toml");
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        fs::write(&real, "a\n").unwrap();
        let link = d.join("config.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut plan = Plan::default();
        plan.change(
            Change {
                path: link.clone(),
                before: Some("a\n".into()),
                after: Some("b\n".into()),
                what: "edited".into(),
                backup: true,
            },
            None,
        );
        let report = plan.apply().unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "b\n");
        assert!(
            report[0].contains("managed/config.toml.oomguard-backup-"),
            "{report:?}"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
