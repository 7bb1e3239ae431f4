//! The real-node harness of tests/agent.rs and tests/lifecycle.rs: what they need to run a
//! pod for real (runc, iproute2 and nft inside a node namespace the test makes), and a guard
//! that removes all of it, also when a test fails. Included with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tend::agent::image::{
    ImageError, PreparedRootfs, RootfsMethod, prepare_rootfs, release_rootfs,
};
use tend::agent::pods::{Images, ReadyImage};
use tend::agent::runtime::bundle::ImageConfig;
use tend::agent::runtime::runc::{ContainerRuntime, Runc};

/// Why the real node tests cannot run here (root, runc, ip, nft, busybox-static), if so.
pub fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (tool, arg) in [("runc", "--version"), ("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Runs a command; its output (panics when it cannot start).
pub fn sh(args: &[&str]) -> std::process::Output {
    match Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("{args:?}: {e}"),
    }
}

/// Runs a command that must succeed; its stdout.
pub fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image that is a directory: busybox with its applets and a page in /www.
pub struct DirImages {
    pub rootfs: PathBuf,
}

impl Images for DirImages {
    fn ensure(&self, image: &str, _policy: Option<&str>) -> Result<ReadyImage, ImageError> {
        Ok(ReadyImage {
            image_id: format!("{image}@sha256:dir"),
            pulled: false,
            config: ImageConfig {
                entrypoint: Some(vec!["/bin/httpd".into()]),
                cmd: Some(
                    ["-f", "-p", "8080", "-h", "/www"]
                        .map(String::from)
                        .to_vec(),
                ),
                ..Default::default()
            },
        })
    }

    fn prepare(&self, _image: &str, container_dir: &Path) -> Result<PathBuf, ImageError> {
        Ok(prepare_rootfs(&self.rootfs, container_dir)?.path)
    }

    fn release(&self, container_dir: &Path) -> Result<(), ImageError> {
        let path = container_dir.join("rootfs");
        let overlay = PreparedRootfs {
            path: path.clone(),
            method: RootfsMethod::Overlay,
        };
        if release_rootfs(&overlay, container_dir).is_ok() {
            return Ok(());
        }
        let copy = PreparedRootfs {
            path,
            method: RootfsMethod::Copy {
                overlay_error: String::new(),
            },
        };
        release_rootfs(&copy, container_dir)
    }
}

/// Everything the test made, removed in Drop (containers, mounts, namespaces, files),
/// also when the test fails.
pub struct Lab {
    pub runtime: Arc<Runc>,
    pub containers: Vec<String>,
    pub netns: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = self.runtime.delete(id);
        }
        // Overlay mounts of container rootfs under the state.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.path().to_string_lossy().into_owned();
            for line in mounts.lines() {
                if let Some(target) = line.split(' ').nth(1)
                    && target.starts_with(&root)
                {
                    let _ = sh(&["umount", "-l", target]);
                }
            }
        }
        for name in self.netns.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
