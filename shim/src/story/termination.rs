//! The kubelet's termination-message file: a host file it bind-mounts at the
//! container's `terminationMessagePath` (`/dev/termination-log` unless the
//! pod says otherwise) and reads into Last State's Message once the
//! container has terminated.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// The kubelet's container annotation naming the path, passed to the spec
/// by containerd when the handler lists it in `container_annotations`.
pub const PATH_ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// The host file mounted at the termination-message path, if any.
pub fn host_file(spec: &serde_json::Value) -> Option<PathBuf> {
    let wanted = spec
        .pointer("/annotations")
        .and_then(|a| a.get(PATH_ANNOTATION))
        .and_then(|v| v.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_PATH);
    spec.pointer("/mounts")?
        .as_array()?
        .iter()
        .filter(|m| m.get("destination").and_then(|d| d.as_str()) == Some(wanted))
        .filter(|m| {
            m.get("type").and_then(|t| t.as_str()) == Some("bind")
                || m.get("options")
                    .and_then(|o| o.as_array())
                    .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
        })
        .filter_map(|m| m.get("source").and_then(|s| s.as_str()))
        .map(PathBuf::from)
        .next_back()
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Written(usize),
    /// The application wrote its own message: it stays.
    KeptApplications(u64),
}

/// Writes `text` to `path` if the file is empty; never over what the
/// application wrote, never through a symlink, never creating the file.
pub fn write_if_empty(path: &std::path::Path, text: &str) -> std::io::Result<Outcome> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > 0 {
        return Ok(Outcome::KeptApplications(meta.len()));
    }
    let bytes = &text.as_bytes()[..text.len().min(super::text::MAX_BYTES)];
    f.write_all(bytes)?;
    Ok(Outcome::Written(bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mounts a CRI containerd writes for a kubelet's container (the
    /// termination-message mount as containerd 1.7 puts it in config.json).
    const SPEC: &str = r#"{"ociVersion":"1.1.0","mounts":[
        {"destination":"/proc","type":"proc","source":"proc","options":["nosuid","noexec","nodev"]},
        {"destination":"/etc/hosts","type":"bind","source":"/var/lib/containerd/sandboxes/x/hosts","options":["rbind","rprivate","rw"]},
        {"destination":"/dev/termination-log","type":"bind","source":"/var/lib/kubelet/pods/6f1e/containers/app/0f3a2b1c","options":["rbind","rprivate","rw"]}
    ]}"#;

    #[test]
    fn the_kubelets_mount_is_found() {
        let spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        assert_eq!(
            host_file(&spec),
            Some(PathBuf::from(
                "/var/lib/kubelet/pods/6f1e/containers/app/0f3a2b1c"
            ))
        );
        // A custom terminationMessagePath, named by the kubelet's annotation.
        let custom = SPEC.replace("/dev/termination-log", "/tmp/why").replacen(
            "\"mounts\"",
            r#""annotations":{"io.kubernetes.container.terminationMessagePath":"/tmp/why"},"mounts""#,
            1,
        );
        let spec: serde_json::Value = serde_json::from_str(&custom).unwrap();
        assert!(host_file(&spec).is_some());
        // Not without that annotation (no guessing at other mounts).
        let spec: serde_json::Value =
            serde_json::from_str(&SPEC.replace("/dev/termination-log", "/tmp/why")).unwrap();
        assert_eq!(host_file(&spec), None);
        assert_eq!(host_file(&serde_json::json!({})), None);
    }

    #[test]
    fn only_an_empty_file_is_written() {
        let dir = std::env::temp_dir().join(format!("og-term-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(
            write_if_empty(&empty, "story").unwrap(),
            Outcome::Written(5)
        );
        assert_eq!(std::fs::read_to_string(&empty).unwrap(), "story");
        assert_eq!(
            write_if_empty(&empty, "again").unwrap(),
            Outcome::KeptApplications(5)
        );
        assert_eq!(std::fs::read_to_string(&empty).unwrap(), "story");
        assert!(write_if_empty(&dir.join("absent"), "x").is_err());
        assert!(!dir.join("absent").exists());
        let link = dir.join("link");
        std::os::unix::fs::symlink(&empty, &link).unwrap();
        assert!(write_if_empty(&link, "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
