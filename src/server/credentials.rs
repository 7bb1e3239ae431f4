//! Node credentials: what an agent receives when it registers with the join token, bound to
//! its node's name, as a kubelet's client certificate is bound to `system:node:NAME`.
//!
//! A credential is 32 random bytes (hex). The server keeps only its SHA-256 digest, in
//! `node-credentials.json` (mode 0600) under the state directory, so that the file is no key
//! to the cluster and the credentials survive a restart of `tend serve`. Registering a name
//! again issues a new credential and revokes the old one (see [`NodeCredentials::issue`]).

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use subtle::ConstantTimeEq;

pub const NODE_CREDENTIALS_FILE: &str = "node-credentials.json";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("node credentials {path}: {reason}")]
    File { path: String, reason: String },
    #[error("publishing node {node}'s credential to the shared store: {reason}")]
    Shared { node: String, reason: String },
    #[error("{0:?} is not a valid node name (lowercase letters, digits, '-' and '.', at most 253)")]
    BadName(String),
}

/// The node credentials the server has issued: node name to SHA-256 digest.
#[derive(Debug)]
pub struct NodeCredentials {
    /// `None` keeps them in memory only (tests that need no restart).
    path: Option<PathBuf>,
    digests: Mutex<BTreeMap<String, [u8; 32]>>,
    /// Where replicas sharing a store publish the digests they issue, so that a node
    /// registered with one control plane is known to all ([`super::shared_credentials`]).
    shared: std::sync::OnceLock<std::sync::Arc<dyn SharedDigests>>,
}

/// The digests of several control planes, kept in their shared store.
pub trait SharedDigests: Send + Sync + std::fmt::Debug {
    /// Publishes `node`'s new digest (blocking); an error keeps the old credential.
    fn publish(&self, node: &str, digest: &[u8; 32]) -> Result<(), String>;
}

impl NodeCredentials {
    /// Credentials kept in memory only.
    pub fn in_memory() -> NodeCredentials {
        NodeCredentials {
            path: None,
            digests: Mutex::new(BTreeMap::new()),
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Reads `node-credentials.json` under `state_dir` (none yet: no node registered).
    pub fn load(state_dir: &Path) -> Result<NodeCredentials, CredentialError> {
        let path = state_dir.join(NODE_CREDENTIALS_FILE);
        let file_error = |reason: String| CredentialError::File {
            path: path.display().to_string(),
            reason,
        };
        let digests = match fs::read(&path) {
            Ok(bytes) => parse_digests(&bytes).map_err(file_error)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(file_error(e.to_string())),
        };
        Ok(NodeCredentials {
            path: Some(path),
            digests: Mutex::new(digests),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Publishes every digest issued from now on to `shared` as well (set once).
    pub fn share(&self, shared: std::sync::Arc<dyn SharedDigests>) {
        let _ = self.shared.set(shared);
    }

    /// Takes digests another replica issued (the shared store's copy wins over this one's).
    pub fn adopt(&self, issued: BTreeMap<String, [u8; 32]>) -> Result<(), CredentialError> {
        if issued.is_empty() {
            return Ok(());
        }
        let mut digests = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (node, digest) in issued {
            changed |= digests.insert(node, digest) != Some(digest);
        }
        if changed {
            self.persist(&digests)?;
        }
        Ok(())
    }

    /// Issues a new credential for `node` and persists its digest; an earlier credential of
    /// the same node stops working. Kubernetes lets a bootstrap token request a client
    /// certificate for any node name, also an existing one (a reinstalled machine keeps its
    /// name); tend does the same, and revoking the old credential means a copy stolen from a
    /// node's disk dies with the node's next registration.
    pub fn issue(&self, node: &str) -> Result<String, CredentialError> {
        if !valid_node_name(node) {
            return Err(CredentialError::BadName(node.to_string()));
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let credential = hex::encode(bytes);
        let new_digest = digest(&credential);
        if let Some(shared) = self.shared.get() {
            shared
                .publish(node, &new_digest)
                .map_err(|reason| CredentialError::Shared {
                    node: node.to_string(),
                    reason,
                })?;
        }
        let mut digests = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        let previous = digests.insert(node.to_string(), new_digest);
        if let Err(e) = self.persist(&digests) {
            match previous {
                Some(old) => digests.insert(node.to_string(), old),
                None => digests.remove(node),
            };
            return Err(e);
        }
        Ok(credential)
    }

    /// The node a presented credential belongs to. The presented token is hashed and compared
    /// with every digest in constant time, so the answer's timing says nothing about how
    /// close a guess came (the scan is over a few hundred 32-byte digests at most).
    pub fn identify(&self, presented: &str) -> Option<String> {
        let presented = digest(presented);
        let digests = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for (name, stored) in digests.iter() {
            if bool::from(stored.ct_eq(&presented)) {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Writes every digest to a private temporary file and renames it into place, so that a
    /// crash leaves the old file or the new one, never half of one.
    fn persist(&self, digests: &BTreeMap<String, [u8; 32]>) -> Result<(), CredentialError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file_error = |e: io::Error| CredentialError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let text: BTreeMap<&str, String> = digests
            .iter()
            .map(|(name, d)| (name.as_str(), format!("sha256:{}", hex::encode(d))))
            .collect();
        let body = serde_json::to_vec_pretty(&text).map_err(|e| CredentialError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(file_error)?;
        file.write_all(&body).map_err(file_error)?;
        file.sync_all().map_err(file_error)?;
        fs::rename(&tmp, path).map_err(file_error)?;
        if let Some(dir) = path.parent()
            && let Ok(dir) = fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

fn digest(credential: &str) -> [u8; 32] {
    Sha256::digest(credential.as_bytes()).into()
}

/// A digest as `sha256:HEX` (the file's and the shared store's form).
pub fn digest_text(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// Parses [`digest_text`]'s form.
pub fn parse_digest_text(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text.trim().strip_prefix("sha256:")?, &mut digest).ok()?;
    Some(digest)
}

fn parse_digests(bytes: &[u8]) -> Result<BTreeMap<String, [u8; 32]>, String> {
    let text: BTreeMap<String, String> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object of digests: {e}"))?;
    text.into_iter()
        .map(|(name, value)| {
            let hex_digest = value
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("node {name:?}: the digest does not start with sha256:"))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut digest)
                .map_err(|e| format!("node {name:?}: {e}"))?;
            Ok((name, digest))
        })
        .collect()
}

/// A DNS-1123 subdomain, as Kubernetes requires of Node names.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|part| !part.is_empty() && !part.starts_with('-') && !part.ends_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn issued_credentials_identify_their_node_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = NodeCredentials::load(dir.path()).expect("load");
        let a = creds.issue("node-a").expect("issue a");
        let b = creds.issue("node-b").expect("issue b");
        assert_eq!(a.len(), 64);
        assert_eq!(creds.identify(&a).as_deref(), Some("node-a"));
        assert_eq!(creds.identify(&b).as_deref(), Some("node-b"));
        assert_eq!(creds.identify("nope"), None);
        assert_eq!(creds.identify(""), None);
        let path = dir.path().join(NODE_CREDENTIALS_FILE);
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains(&a),
            "the file holds digests, not credentials"
        );
        let again = NodeCredentials::load(dir.path()).expect("reload");
        assert_eq!(again.identify(&a).as_deref(), Some("node-a"));
    }

    #[derive(Debug, Default)]
    struct Published(Mutex<Vec<(String, String)>>);

    impl SharedDigests for Published {
        fn publish(&self, node: &str, digest: &[u8; 32]) -> Result<(), String> {
            if node == "refused" {
                return Err("etcd is down".into());
            }
            self.0
                .lock()
                .expect("lock")
                .push((node.to_string(), digest_text(digest)));
            Ok(())
        }
    }

    #[test]
    fn shared_digests_are_published_and_adopted_by_the_other_replicas() {
        let a = NodeCredentials::in_memory();
        let b = NodeCredentials::in_memory();
        let published = std::sync::Arc::new(Published::default());
        a.share(published.clone());
        let credential = a.issue("n1").expect("issue");
        let sent = published.0.lock().expect("lock").clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(b.identify(&credential), None);
        let digest = parse_digest_text(&sent[0].1).expect("digest");
        b.adopt(BTreeMap::from([("n1".to_string(), digest)]))
            .expect("adopt");
        assert_eq!(b.identify(&credential).as_deref(), Some("n1"));
        // Unpublished, not issued: the old credential keeps working.
        let refused = a.issue("refused");
        assert!(
            matches!(refused, Err(CredentialError::Shared { .. })),
            "{refused:?}"
        );
        assert_eq!(a.identify(&credential).as_deref(), Some("n1"));
        assert_eq!(parse_digest_text("md5:00"), None);
    }

    #[test]
    fn registering_again_revokes_the_old_credential() {
        let creds = NodeCredentials::in_memory();
        let old = creds.issue("n1").expect("issue");
        let new = creds.issue("n1").expect("reissue");
        assert_ne!(old, new);
        assert_eq!(creds.identify(&old), None);
        assert_eq!(creds.identify(&new).as_deref(), Some("n1"));
    }

    #[test]
    fn bad_names_and_bad_files_are_refused() {
        let creds = NodeCredentials::in_memory();
        for name in ["", "UPPER", "a/b", "-a", "a..b", &"x".repeat(254)] {
            assert!(creds.issue(name).is_err(), "{name:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(NODE_CREDENTIALS_FILE),
            "{\"n\": \"md5:00\"}",
        )
        .expect("write");
        let err = NodeCredentials::load(dir.path()).expect_err("bad digest");
        assert!(err.to_string().contains("sha256"), "{err}");
    }
}
