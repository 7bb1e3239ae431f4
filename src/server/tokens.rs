//! Bearer tokens: `admin.token` (the CLI) and `join.token` (agents), written once under the state
//! directory and reused on every start.

use rand::RngCore;
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use super::credentials::NodeCredentials;
use subtle::ConstantTimeEq;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const JOIN_TOKEN_FILE: &str = "join.token";

/// Who a request is, by the token it presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Admin,
    /// The join token: it may only register a node (which then uses its own credential).
    Join,
    /// A node's own credential ([`super::credentials`]), bound to the node's name.
    Node(String),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Identity::Admin => "admin",
            Identity::Join => "join",
            Identity::Node(name) => return write!(f, "node {name}"),
        })
    }
}

#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
    pub join: String,
    /// The credentials issued to registered nodes (kept under the state directory).
    pub nodes: Arc<NodeCredentials>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tokens { admin: <redacted>, join: <redacted>, nodes: <redacted> }")
    }
}

impl Tokens {
    /// Reads `admin.token` and `join.token` from `state_dir`, creating them (32 random bytes,
    /// hex, mode 0600) when missing, and the directory (mode 0700) when it does not exist.
    pub fn load_or_create(state_dir: &Path) -> io::Result<Tokens> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)?;
        let nodes = NodeCredentials::load(state_dir)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Tokens {
            admin: load_or_create_token(&state_dir.join(ADMIN_TOKEN_FILE))?,
            join: load_or_create_token(&state_dir.join(JOIN_TOKEN_FILE))?,
            nodes: Arc::new(nodes),
        })
    }

    /// Tokens with no node registered yet, kept in memory (tests).
    pub fn new(admin: impl Into<String>, join: impl Into<String>) -> Tokens {
        Tokens {
            admin: admin.into(),
            join: join.into(),
            nodes: Arc::new(NodeCredentials::in_memory()),
        }
    }

    /// The identity a presented token belongs to. Every comparison always runs, in constant
    /// time (`subtle`, whose comparisons the optimiser is kept from short-circuiting, rather
    /// than a hand-written fold it might turn back into an early exit): how long the answer
    /// takes tells nothing about how much of a guess was right.
    pub fn identify(&self, presented: &str) -> Option<Identity> {
        let node = self.nodes.identify(presented);
        let presented = presented.as_bytes();
        let admin = !self.admin.is_empty() && bool::from(self.admin.as_bytes().ct_eq(presented));
        let join = !self.join.is_empty() && bool::from(self.join.as_bytes().ct_eq(presented));
        match (admin, join, node) {
            (true, _, _) => Some(Identity::Admin),
            (false, true, _) => Some(Identity::Join),
            (false, false, Some(node)) => Some(Identity::Node(node)),
            (false, false, None) => None,
        }
    }
}

/// A new token is written to a private temporary file and hard-linked into place: the link
/// fails if another process got there first, and nobody ever reads a half-written token.
fn load_or_create_token(path: &Path) -> io::Result<String> {
    if !path.exists() {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(token),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    tighten(path)?;
    let token = fs::read_to_string(path)?.trim().to_string();
    if token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty; delete it to get a new token", path.display()),
        ));
    }
    Ok(token)
}

/// A token file others may read (copied in by hand, or an older tend) is made 0600 again.
fn tighten(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "the token file was mode {:o}; making it 0600",
            mode & 0o777
        );
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = Tokens::load_or_create(&state).expect("create");
        assert_eq!(first.admin.len(), 64);
        assert_ne!(first.admin, first.join);
        for name in [ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE] {
            let mode = fs::metadata(state.join(name))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let dir_mode = fs::metadata(&state).expect("meta").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let second = Tokens::load_or_create(&state).expect("reuse");
        assert_eq!(first.admin, second.admin);
        assert_eq!(first.join, second.join);
        // A token left readable by others is made private again.
        let join = state.join(JOIN_TOKEN_FILE);
        fs::set_permissions(&join, fs::Permissions::from_mode(0o644)).expect("chmod");
        let third = Tokens::load_or_create(&state).expect("reuse");
        assert_eq!(third.join, first.join);
        let mode = fs::metadata(&join).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn identify_matches_exact_tokens_only() {
        let tokens = Tokens::new("a".repeat(64), "b".repeat(64));
        assert_eq!(tokens.identify(&"a".repeat(64)), Some(Identity::Admin));
        assert_eq!(tokens.identify(&"b".repeat(64)), Some(Identity::Join));
        assert_eq!(tokens.identify(&"a".repeat(63)), None);
        assert_eq!(tokens.identify(""), None);
        let node = tokens.nodes.issue("n1").expect("issue");
        assert_eq!(tokens.identify(&node), Some(Identity::Node("n1".into())));
        let empty = Tokens::new("", "");
        assert_eq!(empty.identify(""), None);
    }
}
