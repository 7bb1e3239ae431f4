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
    #[error("{0:?} is not a valid node name (lowercase letters, digits, '-' and '.', at most 253)")]
    BadName(String),
}

/// The node credentials the server has issued: node name to SHA-256 digest.
#[derive(Debug)]
pub struct NodeCredentials {
    /// `None` keeps them in memory only (tests that need no restart).
    path: Option<PathBuf>,
    digests: Mutex<BTreeMap<String, [u8; 32]>>,
}

impl NodeCredentials {
    /// Credentials kept in memory only.
    pub fn in_memory() -> NodeCredentials {
        NodeCredentials {
            path: None,
            digests: Mutex::new(BTreeMap::new()),
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
        })
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
        let mut digests = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        let previous = digests.insert(node.to_string(), digest(&credential));
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
