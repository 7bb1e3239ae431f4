//! Layers into a rootfs, and a writable rootfs per container.
//!
//! A layer is a tar (gzip or not, told by its first bytes). Entries are applied in order:
//! `dir/.wh.NAME` removes `NAME` from lower layers, `dir/.wh..wh..opq` empties `dir` of what
//! lower layers put there (not of what this layer put), anything else is created with its
//! mode, owner (when root), mtime, symlink target or hardlink. Paths that are absolute, hold
//! `..`, or go through a symlink already in the rootfs are refused with an error: a layer
//! cannot write outside its rootfs.

use super::ImageError;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A relative path with no `..`, no root, no `.`; `Err` says why not.
pub fn clean_path(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("holds '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    Ok(out)
}

/// Refuses `rel` when one of its parents inside `root` is a symlink or not a directory.
fn check_parents(root: &Path, rel: &Path) -> Result<(), &'static str> {
    let mut at = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err("goes through a symlink"),
            Ok(m) if !m.is_dir() => return Err("has a parent that is not a directory"),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks one layer (`name` is for errors, e.g. its digest) onto `root`.
pub fn unpack_layer(root: &Path, name: &str, data: &[u8]) -> Result<(), ImageError> {
    let layer_err = |message: String| ImageError::Layer {
        layer: name.to_string(),
        message,
    };
    let reader: Box<dyn Read + '_> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(data))
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(layer_err("zstd layers are not supported".into()));
    } else {
        Box::new(data)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // SAFETY: geteuid has no preconditions and cannot fail.
    archive.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    let mut created: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| layer_err(format!("not a tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| layer_err(format!("reading tar: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| layer_err(format!("entry path: {e}")))?
            .into_owned();
        let unsafe_entry = |reason| ImageError::UnsafeEntry {
            layer: name.to_string(),
            entry: raw.display().to_string(),
            reason,
        };
        let rel = clean_path(&raw).map_err(unsafe_entry)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        check_parents(root, &rel).map_err(unsafe_entry)?;
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if file_name == OPAQUE {
            let dir = root.join(&parent);
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    let child_rel = parent.join(child.file_name());
                    if !created.contains(&child_rel) {
                        remove_any(&child.path()).map_err(ImageError::io(child.path()))?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT) {
            let target = root.join(&parent).join(hidden);
            remove_any(&target).map_err(ImageError::io(&target))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|e| layer_err(format!("link name: {e}")))?
                .ok_or_else(|| unsafe_entry("is a hardlink without a target"))?;
            let link = clean_path(&link).map_err(|_| unsafe_entry("links outside the rootfs"))?;
            check_parents(root, &link).map_err(|_| unsafe_entry("links through a symlink"))?;
            let target = root.join(&link);
            let dst = root.join(&rel);
            remove_any(&dst).map_err(ImageError::io(&dst))?;
            fs::hard_link(&target, &dst).map_err(ImageError::io(&dst))?;
            created.insert(rel);
            continue;
        }
        let dst = root.join(&rel);
        if let Ok(existing) = fs::symlink_metadata(&dst)
            && (existing.is_dir() != kind.is_dir() || existing.file_type().is_symlink())
        {
            remove_any(&dst).map_err(ImageError::io(&dst))?;
        }
        let unpacked = entry.unpack_in(root).map_err(|e| {
            layer_err(format!(
                "{}: {}",
                raw.display(),
                crate::errors::error_chain(&e)
            ))
        })?;
        if !unpacked {
            return Err(unsafe_entry("escapes the rootfs"));
        }
        created.insert(rel);
    }
    Ok(())
}

/// How a container's writable rootfs was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsMethod {
    /// An overlay mount: the image rootfs below, `<container>/upper` above.
    Overlay,
    /// A recursive copy of the image rootfs, because the overlay mount failed (the reason).
    Copy { overlay_error: String },
}

/// A container's writable rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRootfs {
    /// `<container_dir>/rootfs`.
    pub path: PathBuf,
    pub method: RootfsMethod,
}

fn c_path(p: &Path) -> Result<CString, ImageError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ImageError::Io {
        path: p.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"),
    })
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<(), String> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let (Ok(src), Ok(fstype), Ok(opts)) = (
        CString::new("overlay"),
        CString::new("overlay"),
        CString::new(opts),
    ) else {
        return Err("a path holds a NUL byte".into());
    };
    let target = c_path(target).map_err(|e| e.to_string())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// A writable rootfs for one container at `<container_dir>/rootfs`: an overlay mount on
/// `image_rootfs` when the kernel allows, else a recursive copy (modes, owners, symlinks and
/// hardlinks kept). [`PreparedRootfs::method`] says which happened and why.
pub fn prepare_rootfs(
    image_rootfs: &Path,
    container_dir: &Path,
) -> Result<PreparedRootfs, ImageError> {
    let rootfs = container_dir.join("rootfs");
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for d in [&rootfs, &upper, &work] {
        fs::create_dir_all(d).map_err(ImageError::io(d))?;
    }
    match mount_overlay(image_rootfs, &upper, &work, &rootfs) {
        Ok(()) => Ok(PreparedRootfs {
            path: rootfs,
            method: RootfsMethod::Overlay,
        }),
        Err(overlay_error) => {
            let _ = fs::remove_dir(&upper);
            let _ = fs::remove_dir(&work);
            copy_tree(image_rootfs, &rootfs)?;
            Ok(PreparedRootfs {
                path: rootfs,
                method: RootfsMethod::Copy { overlay_error },
            })
        }
    }
}

/// Undoes [`prepare_rootfs`]: unmounts the overlay (if any) and removes `container_dir`.
pub fn release_rootfs(prepared: &PreparedRootfs, container_dir: &Path) -> Result<(), ImageError> {
    if prepared.method == RootfsMethod::Overlay {
        let target = c_path(&prepared.path)?;
        // SAFETY: target is a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            return Err(ImageError::Io {
                path: prepared.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    match fs::remove_dir_all(container_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::Io {
            path: container_dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Copies the tree `from` into the existing directory `to`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), ImageError> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    copy_dir(from, to, &mut links)?;
    let m = fs::metadata(from).map_err(ImageError::io(from))?;
    fs::set_permissions(to, fs::Permissions::from_mode(m.mode())).map_err(ImageError::io(to))?;
    Ok(())
}

fn copy_dir(
    from: &Path,
    to: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ImageError> {
    let root = unsafe { libc::geteuid() } == 0;
    for entry in fs::read_dir(from).map_err(ImageError::io(from))? {
        let entry = entry.map_err(ImageError::io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let m = fs::symlink_metadata(&src).map_err(ImageError::io(&src))?;
        let ft = m.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(ImageError::io(&src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(ImageError::io(&dst))?;
        } else if ft.is_dir() {
            fs::create_dir(&dst).map_err(ImageError::io(&dst))?;
            copy_dir(&src, &dst, links)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode()))
                .map_err(ImageError::io(&dst))?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    fs::hard_link(first, &dst).map_err(ImageError::io(&dst))?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), dst.clone());
            }
            fs::copy(&src, &dst).map_err(ImageError::io(&dst))?;
        } else {
            // Devices, fifos, sockets: not in the images we build; skipped.
            continue;
        }
        if root {
            std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))
                .map_err(ImageError::io(&dst))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(Path::new("./a/b")), Ok(PathBuf::from("a/b")));
        assert!(clean_path(Path::new("/etc/passwd")).is_err());
        assert!(clean_path(Path::new("a/../../x")).is_err());
        assert_eq!(clean_path(Path::new("./")), Ok(PathBuf::new()));
    }
}
