//! The node's image store: references, pulls from registries, imports of archives, layers
//! unpacked into one read-only rootfs per image, and a writable copy per container.
//!
//! - [`reference`]: Docker's reference normalisation (pure).
//! - [`store`]: [`ImageStore`] under `<state>/images`: blobs by digest (sha256 verified on
//!   write and on read), an index reference -> manifest digest, rootfs per config digest.
//! - [`registry`]: the [`Registry`] trait (manifest and blob by digest) and its real
//!   implementation with `oci-client`; auth from a Docker `config.json`.
//! - [`unpack`]: layers into a rootfs with whiteouts, opaque dirs and path checks;
//!   [`prepare_rootfs`] for containers (overlayfs, else a recursive copy).
//! - [`archive`]: `docker save` and OCI archives for `--images DIR`.
//!
//! Layout on disk:
//!
//! ```text
//! <state>/images/blobs/sha256/<hex>      manifests, configs, layers (content addressed)
//! <state>/images/index.json              {"docker.io/library/web:v1": "sha256:..."}
//! <state>/images/rootfs/<config hex>/    unpacked image, never written after unpacking
//! ```

pub mod archive;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use reference::{ImageRef, ReferenceError};
pub use registry::{OciRegistry, Registry, RegistryAuth};
pub use store::{Image, ImageStore};
pub use unpack::{PreparedRootfs, RootfsMethod, prepare_rootfs, release_rootfs};

use serde_json::Value;
use std::path::PathBuf;

/// Everything that can go wrong with images, with the context a user needs.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {expected}: content has digest {actual} (corrupt or tampered)")]
    DigestMismatch { expected: String, actual: String },
    #[error("digest {0:?} is not sha256:<64 hex>")]
    BadDigest(String),
    #[error("blob {0} is not in the store")]
    MissingBlob(String),
    #[error("image {0} is not present and the pull policy is Never")]
    NeverPull(String),
    #[error("image {0} is not in the store")]
    NotPresent(String),
    #[error("pulling {reference} from {registry}: {message}")]
    Registry {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("{what}: invalid JSON: {message}")]
    Json { what: String, message: String },
    #[error("{what}: unsupported media type {media_type:?}")]
    MediaType { what: String, media_type: String },
    #[error("{what}: no manifest for linux/{arch} in the image index")]
    NoPlatform { what: String, arch: String },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: &'static str,
    },
    #[error("layer {layer}: {message}")]
    Layer { layer: String, message: String },
    #[error("archive {path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("docker config {path}: {message}")]
    DockerConfig { path: PathBuf, message: String },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }
    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> ImageError {
        let what = what.into();
        move |e| ImageError::Json {
            what,
            message: e.to_string(),
        }
    }
}

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The Kubernetes default: Always for `:latest` or no tag, else IfNotPresent.
    pub fn default_for(reference: &ImageRef) -> PullPolicy {
        if reference.digest.is_none() && reference.tag.as_deref() == Some("latest") {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        }
    }

    pub fn parse(s: &str) -> Option<PullPolicy> {
        match s {
            "Always" => Some(PullPolicy::Always),
            "IfNotPresent" => Some(PullPolicy::IfNotPresent),
            "Never" => Some(PullPolicy::Never),
            _ => None,
        }
    }
}

/// What to do about an image before starting a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullDecision {
    Pull,
    UseLocal,
    /// Never, and the image is not there: the container cannot start (ErrImageNeverPull).
    Fail,
}

/// The pull decision, pure: `present` is whether the store has the reference.
pub fn needs_pull(policy: PullPolicy, present: bool) -> PullDecision {
    match (policy, present) {
        (PullPolicy::Always, _) => PullDecision::Pull,
        (PullPolicy::IfNotPresent, true) | (PullPolicy::Never, true) => PullDecision::UseLocal,
        (PullPolicy::IfNotPresent, false) => PullDecision::Pull,
        (PullPolicy::Never, false) => PullDecision::Fail,
    }
}

/// The parts of the image config the runtime needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`, as in the image.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `80/tcp`, `53/udp`, sorted.
    pub exposed_ports: Vec<String>,
}

impl ImageConfig {
    /// Parses an OCI/Docker image config blob (`{"config": {"Entrypoint": ...}}`).
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
        let v: Value = serde_json::from_slice(bytes).map_err(ImageError::json("image config"))?;
        let c = v.get("config").cloned().unwrap_or(Value::Null);
        let strings = |key: &str| -> Vec<String> {
            c.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |key: &str| {
            c.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let mut exposed_ports: Vec<String> = c
            .get("ExposedPorts")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        exposed_ports.sort();
        Ok(ImageConfig {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: text("WorkingDir"),
            user: text("User"),
            exposed_ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies() {
        use PullDecision::*;
        use PullPolicy::*;
        assert_eq!(needs_pull(Always, true), Pull);
        assert_eq!(needs_pull(Always, false), Pull);
        assert_eq!(needs_pull(IfNotPresent, true), UseLocal);
        assert_eq!(needs_pull(IfNotPresent, false), Pull);
        assert_eq!(needs_pull(Never, true), UseLocal);
        assert_eq!(needs_pull(Never, false), Fail);
        let latest = ImageRef::parse("web").expect("parses");
        assert_eq!(PullPolicy::default_for(&latest), Always);
        let v1 = ImageRef::parse("web:v1").expect("parses");
        assert_eq!(PullPolicy::default_for(&v1), IfNotPresent);
    }

    #[test]
    fn image_config() {
        let c = ImageConfig::parse(
            br#"{"architecture":"amd64","config":{"Entrypoint":["/bin/httpd"],"Cmd":["-f","-p","80"],
            "Env":["PATH=/bin"],"WorkingDir":"/www","User":"1000:1000",
            "ExposedPorts":{"80/tcp":{},"53/udp":{}}}}"#,
        )
        .expect("parses");
        assert_eq!(c.entrypoint, ["/bin/httpd"]);
        assert_eq!(c.cmd, ["-f", "-p", "80"]);
        assert_eq!(c.env, ["PATH=/bin"]);
        assert_eq!(c.working_dir.as_deref(), Some("/www"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.exposed_ports, ["53/udp", "80/tcp"]);
        assert_eq!(
            ImageConfig::parse(b"{}").expect("empty"),
            ImageConfig::default()
        );
        assert!(ImageConfig::parse(b"nope").is_err());
    }
}
