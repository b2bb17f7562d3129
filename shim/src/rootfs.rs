//! The container's root filesystem: containerd hands the snapshot as mounts
//! (overlay, bind) that the shim mounts at `BUNDLE/rootfs`.

use std::path::Path;

use containerd_shim::mount::{mount_rootfs, umount_recursive};
use containerd_shim_protos::types::mount::Mount;

pub fn mount(mounts: &[Mount], target: &Path) -> Result<(), String> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    for m in mounts {
        let fs_type = Some(m.type_.as_str()).filter(|t| !t.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        mount_rootfs(fs_type, source, &m.options, target).map_err(|e| {
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
