//! [`ImageStore`]: content-addressed blobs, an index of references, rootfs per image.
//!
//! Every blob is written to a temporary file and renamed into `blobs/sha256/<hex>` only
//! after its sha256 matched the digest it is stored under; every read checks it again, so a
//! blob corrupted on disk is an error ([`ImageError::DigestMismatch`]), never a bad rootfs.
//! Blobs already present are not fetched again, so images sharing layers share them.

use super::archive::{parse_docker_manifest, parse_oci_index, read_archive};
use super::registry::{Registry, RegistryAuth};
use super::unpack::unpack_layer;
use super::{ImageConfig, ImageError, ImageRef, PullDecision, PullPolicy, needs_pull};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A descriptor in a manifest or an index.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

/// An image manifest, or an index when `manifests` is not empty.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Manifest, ImageError> {
        serde_json::from_slice(bytes).map_err(ImageError::json(what))
    }
}

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The manifest for linux/`arch` in an index (pure).
pub fn pick_platform<'a>(index: &'a Manifest, arch: &str) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<64 hex>` digest.
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ImageError::BadDigest(digest.to_string())),
    }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub reference: ImageRef,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layer digests, lowest first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOutcome {
    pub image: Image,
    /// Whether the registry was asked at all (false: policy said use the local image).
    pub pulled: bool,
    /// Blobs fetched from the registry (config and layers).
    pub fetched: Vec<String>,
    /// Blobs already in the store and not fetched.
    pub reused: Vec<String>,
}

/// The image store under `<state>/images`.
pub struct ImageStore {
    root: PathBuf,
    index_lock: Mutex<()>,
    /// Held while an image is unpacked: pods of one image starting at once (an agent's
    /// first list) wait for one unpacking instead of each reading the layers into memory
    /// and racing on the same temporary directory.
    unpack_lock: Mutex<()>,
}

impl ImageStore {
    /// Opens (creating) `<state>/images`.
    pub fn open(state: &Path) -> Result<ImageStore, ImageError> {
        let root = state.join("images");
        for d in [root.join("blobs/sha256"), root.join("rootfs")] {
            fs::create_dir_all(&d).map_err(ImageError::io(&d))?;
        }
        Ok(ImageStore {
            root,
            index_lock: Mutex::new(()),
            unpack_lock: Mutex::new(()),
        })
    }

    /// `<state>/images`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores `bytes` as `digest`, after checking that they hash to it.
    pub fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        if path.is_file() {
            return Ok(());
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(ImageError::io(&tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(ImageError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(ImageError::io(&path))
    }

    /// The blob `digest`, checked against it.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob(digest.to_string()));
            }
            Err(e) => return Err(ImageError::Io { path, source: e }),
        };
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Reference -> manifest digest.
    pub fn references(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(ImageError::json(path.display().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::Io { path, source: e }),
        }
    }

    /// Points `reference` at the manifest `digest` (which must be stored).
    pub fn tag(&self, reference: &ImageRef, digest: &str) -> Result<(), ImageError> {
        let _guard = self.index_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut refs = self.references()?;
        refs.insert(reference.to_string(), digest.to_string());
        let path = self.index_path();
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(&refs).map_err(ImageError::json("index.json"))?;
        fs::write(&tmp, json).map_err(ImageError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(ImageError::io(&path))
    }

    /// Whether the store has `reference` with all its blobs.
    pub fn is_present(&self, reference: &ImageRef) -> bool {
        self.image(reference).is_ok_and(|i| {
            self.has_blob(&i.config_digest) && i.layers.iter().all(|l| self.has_blob(l))
        })
    }

    /// The image `reference` names in the store.
    pub fn image(&self, reference: &ImageRef) -> Result<Image, ImageError> {
        let manifest_digest = match &reference.digest {
            Some(d) if self.has_blob(d) => d.clone(),
            _ => self
                .references()?
                .get(&reference.to_string())
                .cloned()
                .ok_or_else(|| ImageError::NotPresent(reference.to_string()))?,
        };
        self.image_from_manifest(reference, &manifest_digest)
    }

    fn image_from_manifest(
        &self,
        reference: &ImageRef,
        manifest_digest: &str,
    ) -> Result<Image, ImageError> {
        let what = format!("manifest {manifest_digest} of {reference}");
        let manifest = Manifest::parse(&what, &self.read_blob(manifest_digest)?)?;
        let config = manifest.config.ok_or_else(|| ImageError::MediaType {
            what: what.clone(),
            media_type: manifest.media_type.clone(),
        })?;
        let config_bytes = self.read_blob(&config.digest)?;
        Ok(Image {
            reference: reference.clone(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            config: ImageConfig::parse(&config_bytes)?,
        })
    }

    /// Applies `policy`: pulls when it says so, else uses the stored image.
    pub async fn ensure<R: Registry>(
        &self,
        registry: &R,
        reference: &ImageRef,
        policy: PullPolicy,
        auth: &RegistryAuth,
    ) -> Result<PullOutcome, ImageError> {
        match needs_pull(policy, self.is_present(reference)) {
            PullDecision::Fail => Err(ImageError::NeverPull(reference.to_string())),
            PullDecision::UseLocal => Ok(PullOutcome {
                image: self.image(reference)?,
                pulled: false,
                fetched: Vec::new(),
                reused: Vec::new(),
            }),
            PullDecision::Pull => self.pull(registry, reference, auth).await,
        }
    }

    /// Pulls `reference`: manifest (the linux/<arch> one of an index), config and layers
    /// not already stored, each verified; then tags it.
    pub async fn pull<R: Registry>(
        &self,
        registry: &R,
        reference: &ImageRef,
        auth: &RegistryAuth,
    ) -> Result<PullOutcome, ImageError> {
        let (mut bytes, _) = registry.manifest(reference, auth).await?;
        let mut digest = sha256_digest(&bytes);
        if let Some(pinned) = &reference.digest
            && pinned != &digest
        {
            return Err(ImageError::DigestMismatch {
                expected: pinned.clone(),
                actual: digest,
            });
        }
        let mut manifest = Manifest::parse(&format!("manifest of {reference}"), &bytes)?;
        if !manifest.manifests.is_empty() {
            let arch = oci_arch();
            let chosen = pick_platform(&manifest, arch).ok_or_else(|| ImageError::NoPlatform {
                what: reference.to_string(),
                arch: arch.to_string(),
            })?;
            let by_digest = ImageRef {
                digest: Some(chosen.digest.clone()),
                ..reference.clone()
            };
            (bytes, _) = registry.manifest(&by_digest, auth).await?;
            digest = sha256_digest(&bytes);
            if digest != chosen.digest {
                return Err(ImageError::DigestMismatch {
                    expected: chosen.digest.clone(),
                    actual: digest,
                });
            }
            manifest = Manifest::parse(&format!("manifest {digest} of {reference}"), &bytes)?;
        }
        let config = manifest
            .config
            .clone()
            .ok_or_else(|| ImageError::MediaType {
                what: format!("manifest of {reference}"),
                media_type: manifest.media_type.clone(),
            })?;
        let mut fetched = Vec::new();
        let mut reused = Vec::new();
        for d in std::iter::once(&config).chain(manifest.layers.iter()) {
            if self.has_blob(&d.digest) {
                reused.push(d.digest.clone());
                continue;
            }
            let blob = registry.blob(reference, &d.digest, auth).await?;
            self.write_blob(&d.digest, &blob)?;
            fetched.push(d.digest.clone());
        }
        self.write_blob(&digest, &bytes)?;
        self.tag(reference, &digest)?;
        Ok(PullOutcome {
            image: self.image_from_manifest(reference, &digest)?,
            pulled: true,
            fetched,
            reused,
        })
    }

    /// The read-only rootfs of `image` (`rootfs/<config hex>`), unpacked on first use.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf, ImageError> {
        let dir = self
            .root
            .join("rootfs")
            .join(digest_hex(&image.config_digest)?);
        if dir.is_dir() {
            return Ok(dir);
        }
        let _unpacking = self.unpack_lock.lock().unwrap_or_else(|p| p.into_inner());
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp = self.root.join("rootfs").join(format!(
            ".tmp-{}-{}",
            digest_hex(&image.config_digest)?,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(ImageError::io(&tmp))?;
        let result = image.layers.iter().try_for_each(|layer| {
            let data = self.read_blob(layer)?;
            unpack_layer(&tmp, layer, &data)
        });
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &dir).map_err(ImageError::io(&dir))?;
        Ok(dir)
    }

    /// Imports every regular file of `dir` as a docker-save or OCI archive; returns the
    /// references imported.
    pub fn import_dir(&self, dir: &Path) -> Result<Vec<ImageRef>, ImageError> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(ImageError::io(dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut refs = Vec::new();
        for f in files {
            refs.extend(self.import_archive(&f)?);
        }
        Ok(refs)
    }

    /// Imports one archive (docker save or OCI).
    pub fn import_archive(&self, path: &Path) -> Result<Vec<ImageRef>, ImageError> {
        let err = |message: String| ImageError::Archive {
            path: path.to_path_buf(),
            message,
        };
        let files = read_archive(path)?;
        let file = |name: &str| -> Result<&Vec<u8>, ImageError> {
            files
                .get(name.trim_start_matches("./"))
                .ok_or_else(|| err(format!("{name} is not in the archive")))
        };
        let oci_blob = |digest: &str| -> Result<&Vec<u8>, ImageError> {
            file(&format!("blobs/sha256/{}", digest_hex(digest)?))
        };
        let mut imported = Vec::new();
        if let Some(index) = files.get("index.json") {
            for (reference, manifest_digest) in parse_oci_index(index).map_err(err)? {
                let bytes = oci_blob(&manifest_digest)?;
                let manifest = Manifest::parse(&manifest_digest, bytes)?;
                let config = manifest.config.as_ref().ok_or_else(|| {
                    err(format!(
                        "{manifest_digest}: an index inside an index is not supported"
                    ))
                })?;
                for d in std::iter::once(config).chain(manifest.layers.iter()) {
                    self.write_blob(&d.digest, oci_blob(&d.digest)?)?;
                }
                self.write_blob(&manifest_digest, bytes)?;
                self.tag(&reference, &manifest_digest)?;
                imported.push(reference);
            }
        } else if let Some(m) = files.get("manifest.json") {
            for entry in parse_docker_manifest(m).map_err(err)? {
                let config = file(&entry.config)?;
                let config_digest = sha256_digest(config);
                self.write_blob(&config_digest, config)?;
                let mut layers = Vec::new();
                for l in &entry.layers {
                    let bytes = file(l)?;
                    let digest = sha256_digest(bytes);
                    self.write_blob(&digest, bytes)?;
                    let media_type = if bytes.starts_with(&[0x1f, 0x8b]) {
                        "application/vnd.oci.image.layer.v1.tar+gzip"
                    } else {
                        "application/vnd.oci.image.layer.v1.tar"
                    };
                    layers.push(serde_json::json!({
                        "mediaType": media_type, "digest": digest, "size": bytes.len()}));
                }
                let manifest = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": config_digest, "size": config.len()},
                    "layers": layers,
                });
                let bytes = serde_json::to_vec(&manifest).map_err(ImageError::json("manifest"))?;
                let manifest_digest = sha256_digest(&bytes);
                self.write_blob(&manifest_digest, &bytes)?;
                for tag in entry.repo_tags.unwrap_or_default() {
                    let reference = ImageRef::parse(&tag)?;
                    self.tag(&reference, &manifest_digest)?;
                    imported.push(reference);
                }
            }
        } else {
            return Err(err(
                "neither index.json (OCI) nor manifest.json (docker save)".into(),
            ));
        }
        Ok(imported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A registry in memory that records what it was asked.
    #[derive(Default)]
    struct FakeRegistry {
        manifests: HashMap<String, Vec<u8>>,
        blobs: HashMap<String, Vec<u8>>,
        calls: Mutex<Vec<String>>,
    }

    impl Registry for FakeRegistry {
        async fn manifest(
            &self,
            reference: &ImageRef,
            _auth: &RegistryAuth,
        ) -> Result<(Vec<u8>, String), ImageError> {
            let key = reference
                .digest
                .clone()
                .unwrap_or_else(|| reference.to_string());
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("manifest {key}"));
            self.manifests
                .get(&key)
                .map(|b| (b.clone(), String::new()))
                .ok_or(ImageError::NotPresent(key))
        }
        async fn blob(
            &self,
            _reference: &ImageRef,
            digest: &str,
            _auth: &RegistryAuth,
        ) -> Result<Vec<u8>, ImageError> {
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("blob {digest}"));
            self.blobs
                .get(digest)
                .cloned()
                .ok_or_else(|| ImageError::MissingBlob(digest.to_string()))
        }
    }

    fn manifest_json(config: &str, layer: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1}],
        }))
        .unwrap_or_default()
    }

    #[tokio::test]
    async fn pull_picks_the_platform_of_an_index_and_verifies_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("store");
        let config = br#"{"config":{"Cmd":["sh"]}}"#.to_vec();
        let layer = b"not really a tar".to_vec();
        let (cd, ld) = (sha256_digest(&config), sha256_digest(&layer));
        let manifest = manifest_json(&cd, &ld);
        let md = sha256_digest(&manifest);
        let index = serde_json::to_vec(&serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": format!("sha256:{}", "0".repeat(64)), "platform": {"os": "linux", "architecture": "s390x"}},
                {"digest": md, "platform": {"os": "linux", "architecture": oci_arch()}},
            ]}))
        .expect("json");
        let r = ImageRef::parse("reg.example:5000/app:v1").expect("ref");
        let mut fake = FakeRegistry::default();
        fake.manifests.insert(r.to_string(), index);
        fake.manifests.insert(md.clone(), manifest);
        fake.blobs.insert(cd.clone(), config);
        fake.blobs.insert(ld.clone(), b"tampered".to_vec());
        let auth = RegistryAuth::Anonymous;
        let err = store.pull(&fake, &r, &auth).await;
        assert!(
            matches!(err, Err(ImageError::DigestMismatch { .. })),
            "{err:?}"
        );
        assert!(!store.is_present(&r));
        fake.blobs.insert(ld.clone(), layer);
        let out = store.pull(&fake, &r, &auth).await.expect("pull");
        assert_eq!(out.image.manifest_digest, md);
        assert_eq!(out.image.config.cmd, ["sh"]);
        assert_eq!(
            out.fetched,
            std::slice::from_ref(&ld),
            "config was kept from the first try"
        );
        assert_eq!(out.reused, std::slice::from_ref(&cd));
        assert!(store.is_present(&r));
        let calls = fake.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(calls.contains(&format!("manifest {md}")), "{calls:?}");
        // A reference pinned to another digest is refused.
        let pinned = ImageRef {
            digest: Some(format!("sha256:{}", "1".repeat(64))),
            ..r.clone()
        };
        fake.manifests
            .insert(format!("sha256:{}", "1".repeat(64)), b"{}".to_vec());
        let err = store.pull(&fake, &pinned, &auth).await;
        assert!(
            matches!(err, Err(ImageError::DigestMismatch { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn blobs_are_verified_on_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("store");
        let d = sha256_digest(b"hello");
        assert!(store.write_blob(&d, b"hullo").is_err());
        store.write_blob(&d, b"hello").expect("write");
        assert_eq!(store.read_blob(&d).expect("read"), b"hello");
        assert!(matches!(
            store.write_blob("md5:x", b""),
            Err(ImageError::BadDigest(_))
        ));
        assert!(matches!(
            store.read_blob(&sha256_digest(b"absent")),
            Err(ImageError::MissingBlob(_))
        ));
    }
}
