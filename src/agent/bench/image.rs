//! Images for the agent bench, built here without Docker, umoci or skopeo: one uncompressed
//! tar layer, an OCI config and an OCI manifest, as bytes. They are written as an OCI image
//! layout archive (what `--images DIR` imports) or pushed to a registry with oci-client.

use crate::agent::image::store::{oci_arch, sha256_digest};
use anyhow::Context as _;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The busybox image the pods of the bench run (imported, never pulled).
pub const BUSYBOX_REF: &str = "docker.io/library/busybox:tend-bench";

/// busybox-static and its applets, `/bin/sh` by default.
pub fn busybox_image() -> anyhow::Result<BuiltImage> {
    BuiltImage::new(busybox_layer(Path::new(super::BUSYBOX))?, &["/bin/sh"])
}

/// One single-layer image as the blobs a registry or an archive holds.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl BuiltImage {
    /// An image of one uncompressed `layer` with `cmd` as its Cmd and `PATH=/bin`.
    pub fn new(layer: Vec<u8>, cmd: &[&str]) -> anyhow::Result<BuiltImage> {
        let config = serde_json::to_vec(&json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": sha256_digest(&layer),
                "size": layer.len(),
            }],
        }))?;
        Ok(BuiltImage {
            layer,
            config,
            manifest,
        })
    }

    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// Writes an OCI image layout archive naming the image `reference` (a full reference,
    /// e.g. `docker.io/library/busybox:bench`).
    pub fn write_oci_archive(&self, path: &Path, reference: &str) -> anyhow::Result<()> {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": self.manifest_digest(),
                "size": self.manifest.len(),
                "annotations": {crate::agent::image::archive::REF_NAME: reference},
            }],
        }))?;
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the image archive {}", path.display()))?;
        let mut tar = tar::Builder::new(file);
        let mut add = |name: String, bytes: &[u8]| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, bytes)
        };
        add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json".into(), &index)?;
        for blob in [&self.layer, &self.config, &self.manifest] {
            let digest = sha256_digest(blob);
            let hex = digest.trim_start_matches("sha256:");
            add(format!("blobs/sha256/{hex}"), blob)?;
        }
        tar.into_inner()
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing the image archive {}", path.display()))?;
        Ok(())
    }

    /// Pushes the image as `host/repository:tag` to a plain-HTTP registry.
    pub async fn push(&self, host: &str, repository: &str, tag: &str) -> anyhow::Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(vec![host.to_string()]),
            ..Default::default()
        });
        let reference = oci_client::Reference::with_tag(
            host.to_string(),
            repository.to_string(),
            tag.to_string(),
        );
        let what = || format!("pushing {host}/{repository}:{tag}");
        for blob in [&self.layer, &self.config] {
            client
                .push_blob(&reference, blob.clone(), &sha256_digest(blob))
                .await
                .with_context(what)?;
        }
        let content_type = reqwest::header::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
        client
            .push_manifest_raw(&reference, self.manifest.clone(), content_type)
            .await
            .with_context(what)?;
        Ok(())
    }
}

/// A tar header for `path` of `kind` with `mode`, owned by root, time 0.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The applets `busybox --list` names (busybox itself left out).
pub fn busybox_applets(busybox: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} --list failed ({})",
        busybox.display(),
        out.status
    );
    Ok(parse_applets(&String::from_utf8_lossy(&out.stdout)))
}

/// Applet names, one a line, as `busybox --list` prints them; odd names are dropped.
pub fn parse_applets(list: &str) -> Vec<String> {
    let mut applets: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|a| {
            !a.is_empty()
                && *a != "busybox"
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.[".contains(&b))
        })
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    applets
}

/// A layer holding `/bin/busybox` (from `busybox`), a symlink per applet in /bin, and the
/// directories a container's mounts need.
pub fn busybox_layer(busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let binary =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let applets = busybox_applets(busybox)?;
    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())?;
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(tar.into_inner()?)
}

/// A layer holding one file `data/blob` of `size` random bytes (incompressible, so that the
/// bytes pulled are the bytes stored).
pub fn random_layer(size: usize) -> anyhow::Result<Vec<u8>> {
    let mut data = vec![0u8; size];
    rand::Rng::fill(&mut rand::rng(), data.as_mut_slice());
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, "data/", std::io::empty())?;
    let mut h = header(tar::EntryType::Regular, 0o644, size as u64);
    tar.append_data(&mut h, "data/blob", data.as_slice())?;
    Ok(tar.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::image::ImageRef;
    use crate::agent::image::ImageStore;

    #[test]
    fn applet_lists_are_cleaned() {
        assert_eq!(
            parse_applets("sh\nbusybox\n\n[\n[[\nls\n../x\nsh\n"),
            ["[", "[[", "ls", "sh"]
        );
    }

    #[test]
    fn a_built_image_imports_and_unpacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layer = random_layer(4096).expect("layer");
        let image = BuiltImage::new(layer, &["/bin/true"]).expect("image");
        let archive = dir.path().join("img.tar");
        let name = "docker.io/library/bench:v1";
        image.write_oci_archive(&archive, name).expect("archive");
        let store = ImageStore::open(&dir.path().join("state")).expect("store");
        let refs = store.import_archive(&archive).expect("import");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].to_string(), name);
        let stored = store
            .image(&ImageRef::parse("bench:v1").expect("ref"))
            .expect("stored");
        assert_eq!(stored.manifest_digest, image.manifest_digest());
        assert_eq!(stored.config.cmd, ["/bin/true"]);
        let rootfs = store.rootfs(&stored).expect("rootfs");
        let blob = std::fs::metadata(rootfs.join("data/blob")).expect("blob");
        assert_eq!(blob.len(), 4096);
    }

    /// An agent's first list starts every pod of an image at once: one unpacking, the
    /// others wait for it (they used to race on one temporary directory).
    #[test]
    fn pods_starting_at_once_share_one_unpacking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image =
            BuiltImage::new(random_layer(4 << 20).expect("layer"), &["/bin/true"]).expect("image");
        let archive = dir.path().join("img.tar");
        image
            .write_oci_archive(&archive, "docker.io/library/bench:v1")
            .expect("archive");
        let store = ImageStore::open(&dir.path().join("state")).expect("store");
        store.import_archive(&archive).expect("import");
        let stored = store
            .image(&ImageRef::parse("bench:v1").expect("ref"))
            .expect("stored");
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| store.rootfs(&stored))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let first = results[0].as_ref().expect("unpacked").clone();
        for r in &results {
            assert_eq!(r.as_ref().expect("unpacked"), &first);
        }
        assert_eq!(
            std::fs::metadata(first.join("data/blob"))
                .expect("blob")
                .len(),
            4 << 20
        );
        let left: Vec<_> = std::fs::read_dir(store.root().join("rootfs"))
            .expect("rootfs dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
