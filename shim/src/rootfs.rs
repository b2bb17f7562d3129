//! The container's root filesystem: containerd hands the snapshot as mounts
//! (overlay, bind) that the shim mounts at `BUNDLE/rootfs`.
//!
//! Mounted in-process: the crate helper forks and waits for its child through
//! its own reaper, which this shim does not run (it would block forever).

use std::path::{Path, PathBuf};

use containerd_shim::mount::umount_recursive;
use containerd_shim_protos::types::mount::Mount;
use nix::mount::MsFlags;

pub fn mount(mounts: &[Mount], target: &Path) -> Result<(), String> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    for m in mounts {
        let fs_type = Some(m.type_.as_str()).filter(|t| !t.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        mount_one(fs_type, source, &m.options, target).map_err(|e| {
            format!(
                "mount {} {} on {}: {e}",
                m.type_,
                m.source,
                target.display()
            )
        })?;
    }
    Ok(())
}

/// Unmounts everything at or below `target`; nothing mounted is fine.
pub fn unmount(target: &Path) -> Result<(), String> {
    let Some(t) = target.to_str() else {
        return Err(format!("{}: not a UTF-8 path", target.display()));
    };
    umount_recursive(Some(t), libc::MNT_DETACH)
        .map_err(|e| format!("unmount {}: {e}", target.display()))
}

/// Splits mount(8)-style options into flags and filesystem data.
pub fn parse_options(options: &[String]) -> (MsFlags, Vec<String>, bool) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut remount_ro = false;
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "defaults" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                (MsFlags::empty(), MsFlags::empty())
            }
            other => {
                data.push(other.to_string());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags = (flags | set) & !clear;
    }
    // A read-only bind needs a second, remounting call.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        remount_ro = true;
    }
    (flags, data, remount_ro)
}

/// Overlay data longer than a page is refused by the kernel. Layers share a
/// long prefix (the snapshotter's directory): mount from there with short
/// relative lowerdirs. Returns the directory to mount from and the new data.
pub fn compact_overlay(data: &str) -> Option<(PathBuf, String)> {
    let mut lowers: Vec<&str> = Vec::new();
    let mut rest = Vec::new();
    for opt in data.split(',') {
        match opt.strip_prefix("lowerdir=") {
            Some(l) => lowers.extend(l.split(':')),
            None => rest.push(opt),
        }
    }
    let first = Path::new(lowers.first()?);
    let mut prefix = first.parent()?.to_path_buf();
    while !lowers.iter().all(|l| Path::new(l).starts_with(&prefix)) {
        prefix = prefix.parent()?.to_path_buf();
    }
    if prefix.as_os_str().len() <= 1 {
        return None;
    }
    let rel: Vec<String> = lowers
        .iter()
        .map(|l| {
            Path::new(l)
                .strip_prefix(&prefix)
                .map(|p| p.display().to_string())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let mut opts = vec![format!("lowerdir={}", rel.join(":"))];
    opts.extend(rest.iter().map(|s| s.to_string()));
    Some((prefix, opts.join(",")))
}

fn mount_one(
    fs_type: Option<&str>,
    source: Option<&str>,
    options: &[String],
    target: &Path,
) -> Result<(), String> {
    let (flags, data, remount_ro) = parse_options(options);
    let mut data = data.join(",");
    let page = 4096;
    let mut from_dir = None;
    if fs_type == Some("overlay") && data.len() >= page - 512 {
        if let Some((dir, short)) = compact_overlay(&data) {
            from_dir = Some(dir);
            data = short;
        }
    }
    let target = std::path::absolute(target).map_err(|e| e.to_string())?;
    let data_opt = Some(data.as_str()).filter(|d| !d.is_empty());
    let result = match &from_dir {
        // The shim serves on one thread and nothing else uses the working
        // directory meanwhile, so changing it around the call is safe.
        Some(dir) => {
            let back = std::env::current_dir().map_err(|e| e.to_string())?;
            std::env::set_current_dir(dir).map_err(|e| format!("chdir {}: {e}", dir.display()))?;
            let r = nix::mount::mount(source, &target, fs_type, flags, data_opt);
            let _ = std::env::set_current_dir(back);
            r
        }
        None => nix::mount::mount(source, &target, fs_type, flags, data_opt),
    };
    result.map_err(|e| e.to_string())?;
    if remount_ro {
        nix::mount::mount::<str, Path, str, str>(
            None,
            &target,
            None,
            flags | MsFlags::MS_REMOUNT,
            None,
        )
        .map_err(|e| format!("remount read-only: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_containerd_sends_them() {
        let opts: Vec<String> = [
            "index=off",
            "workdir=/s/9/work",
            "upperdir=/s/9/fs",
            "lowerdir=/s/1/fs",
            "rw",
        ]
        .map(String::from)
        .to_vec();
        let (flags, data, ro) = parse_options(&opts);
        assert_eq!(flags, MsFlags::empty());
        assert_eq!(
            data,
            [
                "index=off",
                "workdir=/s/9/work",
                "upperdir=/s/9/fs",
                "lowerdir=/s/1/fs"
            ]
        );
        assert!(!ro);
        let (flags, data, ro) = parse_options(&["rbind".into(), "ro".into()]);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert!(data.is_empty() && ro);
    }

    #[test]
    fn long_overlay_lowerdirs_are_compacted() {
        let base = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let lowers: Vec<String> = (1..200).map(|i| format!("{base}/{i}/fs")).collect();
        let data = format!("index=off,lowerdir={}", lowers.join(":"));
        assert!(data.len() > 4096);
        let (dir, short) = compact_overlay(&data).unwrap();
        assert_eq!(dir, Path::new(base));
        assert!(short.starts_with("lowerdir=1/fs:2/fs:"), "{short}");
        assert!(short.ends_with(",index=off"));
        assert!(short.len() < 4096);
    }

    /// A real bind mount and unmount (root on this machine).
    #[test]
    fn bind_mount_and_unmount() {
        let dir = std::env::temp_dir().join(format!("oomguard-rootfs-{}", std::process::id()));
        let (src, dst) = (dir.join("src"), dir.join("rootfs"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("marker"), "x").unwrap();
        let m = Mount {
            type_: "bind".into(),
            source: src.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
            ..Default::default()
        };
        match mount(&[m], &dst) {
            Ok(()) => {
                assert!(dst.join("marker").exists());
                assert!(std::fs::write(dst.join("new"), "y").is_err(), "read-only");
                unmount(&dst).unwrap();
                assert!(!dst.join("marker").exists());
            }
            Err(e) if e.contains("EPERM") => eprintln!("not root here: {e}"),
            Err(e) => panic!("{e}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
