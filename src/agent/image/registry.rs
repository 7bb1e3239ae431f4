//! Talking to registries: the narrow [`Registry`] trait (a manifest by reference, a blob by
//! digest) with the real [`OciRegistry`] on `oci-client`, and credentials from a Docker
//! `config.json`. Verifying digests is the store's job, not the transport's.

use super::{ImageError, ImageRef};
use base64::Engine;
use std::path::Path;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => write!(f, "Anonymous"),
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

/// Media types we accept for manifests, best first.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The side effect of pulling: fetch bytes. Implemented for real by [`OciRegistry`] and by
/// recording fakes in tests.
pub trait Registry {
    /// The manifest `reference` names (by tag or digest): raw bytes and their media type.
    fn manifest(
        &self,
        reference: &ImageRef,
        auth: &RegistryAuth,
    ) -> impl Future<Output = Result<(Vec<u8>, String), ImageError>> + Send;
    /// The blob `digest` in `reference`'s repository.
    fn blob(
        &self,
        reference: &ImageRef,
        digest: &str,
        auth: &RegistryAuth,
    ) -> impl Future<Output = Result<Vec<u8>, ImageError>> + Send;
}

/// A registry reached with `oci-client`; `insecure` registries (`host:port`) use plain HTTP.
pub struct OciRegistry {
    client: oci_client::Client,
}

impl OciRegistry {
    pub fn new(insecure_registries: Vec<String>) -> OciRegistry {
        // oci-client is built without its own TLS provider (it would pull aws-lc); use the
        // ring provider the rest of the binary already has. Err: one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(insecure_registries),
            ..Default::default()
        };
        OciRegistry {
            client: oci_client::Client::new(config),
        }
    }
}

fn to_oci(reference: &ImageRef) -> Result<oci_client::Reference, ImageError> {
    let r = match (&reference.digest, &reference.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(
            reference.registry.clone(),
            reference.repository.clone(),
            d.clone(),
        ),
        (None, Some(t)) => oci_client::Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            t.clone(),
        ),
        (None, None) => oci_client::Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            "latest".to_string(),
        ),
    };
    Ok(r)
}

fn to_oci_auth(auth: &RegistryAuth) -> oci_client::secrets::RegistryAuth {
    match auth {
        RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
        RegistryAuth::Basic { username, password } => {
            oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
        }
    }
}

fn registry_error(reference: &ImageRef, e: impl std::fmt::Display) -> ImageError {
    ImageError::Registry {
        reference: reference.to_string(),
        registry: reference.registry.clone(),
        message: e.to_string(),
    }
}

impl Registry for OciRegistry {
    async fn manifest(
        &self,
        reference: &ImageRef,
        auth: &RegistryAuth,
    ) -> Result<(Vec<u8>, String), ImageError> {
        let r = to_oci(reference)?;
        let (bytes, _digest) = self
            .client
            .pull_manifest_raw(&r, &to_oci_auth(auth), MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| registry_error(reference, e))?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| MANIFEST_MEDIA_TYPES[0].to_string());
        Ok((bytes.to_vec(), media_type))
    }

    async fn blob(
        &self,
        reference: &ImageRef,
        digest: &str,
        auth: &RegistryAuth,
    ) -> Result<Vec<u8>, ImageError> {
        let r = to_oci(reference)?;
        // pull_blob authenticates through the token cache that manifest() filled; make
        // sure of it when a blob is fetched first.
        self.client
            .store_auth_if_needed(r.resolve_registry(), &to_oci_auth(auth))
            .await;
        let mut out: Vec<u8> = Vec::new();
        self.client
            .pull_blob(&r, digest, &mut out)
            .await
            .map_err(|e| registry_error(reference, e))?;
        Ok(out)
    }
}

/// The credentials for `registry` in a Docker `config.json` (`auths.<host>.auth` as base64
/// `user:password`, or `username`/`password`); Anonymous when the file has none for it.
pub fn auth_from_docker_config(path: &Path, registry: &str) -> Result<RegistryAuth, ImageError> {
    let bytes = std::fs::read(path).map_err(ImageError::io(path))?;
    auth_from_docker_config_bytes(&bytes, registry).map_err(|message| ImageError::DockerConfig {
        path: path.to_path_buf(),
        message,
    })
}

/// Pure part of [`auth_from_docker_config`].
pub fn auth_from_docker_config_bytes(bytes: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let docker_hub = registry == super::reference::DEFAULT_REGISTRY;
    let entry = auths.iter().find(|(key, _)| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        host == registry
            || (docker_hub
                && matches!(
                    host,
                    "index.docker.io" | "registry-1.docker.io" | "docker.io"
                ))
    });
    let Some((key, entry)) = entry else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("auths.{key}.auth: not base64: {e}"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| format!("auths.{key}.auth: not UTF-8 after base64"))?;
        let Some((username, password)) = text.split_once(':') else {
            return Err(format!("auths.{key}.auth: not user:password"));
        };
        return Ok(RegistryAuth::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(RegistryAuth::Basic {
            username: u.to_string(),
            password: p.to_string(),
        }),
        _ => Ok(RegistryAuth::Anonymous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auth() {
        let cfg = br#"{"auths":{
            "127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"username":"hub","password":"pw"},
            "ghcr.io":{}}}"#;
        assert_eq!(
            auth_from_docker_config_bytes(cfg, "127.0.0.1:5000").expect("ok"),
            RegistryAuth::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            auth_from_docker_config_bytes(cfg, "docker.io").expect("ok"),
            RegistryAuth::Basic {
                username: "hub".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            auth_from_docker_config_bytes(cfg, "ghcr.io").expect("ok"),
            RegistryAuth::Anonymous
        );
        assert_eq!(
            auth_from_docker_config_bytes(cfg, "quay.io").expect("ok"),
            RegistryAuth::Anonymous
        );
        assert!(auth_from_docker_config_bytes(br#"{"auths":{"h":{"auth":"!!"}}}"#, "h").is_err());
    }
}
