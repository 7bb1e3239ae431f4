//! Image references normalised as Docker does: `web:v1` is `docker.io/library/web:v1`,
//! `host:5000/web` (no tag) is `host:5000/web:latest`, `name@sha256:<hex>` pins a digest.
//! Pure: no I/O.

use std::fmt;

/// The registry Docker assumes when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A reference that could not be parsed, with the text and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: &'static str,
}

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// `docker.io`, `127.0.0.1:5000`, `ghcr.io`...
    pub registry: String,
    /// `library/web`, `org/app`...
    pub repository: String,
    /// `latest` when the reference named neither a tag nor a digest.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises `input` the way `docker pull` does.
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        let err = |reason| ReferenceError {
            input: input.to_string(),
            reason,
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(err("is empty"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (text, None),
        };
        if let Some(d) = digest {
            let Some(hex) = d.strip_prefix("sha256:") else {
                return Err(err("digest is not sha256:<hex>"));
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("sha256 digest is not 64 hex digits"));
            }
        }
        // The tag is after the last ':' of the last path component (a registry port is not).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                || t.starts_with(['.', '-']))
        {
            return Err(err(
                "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), path.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || repository.split('/').any(str::is_empty) {
            return Err(err("repository name has an empty component"));
        }
        if !repository.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'/' | b'.' | b'_' | b'-')
        }) {
            return Err(err("repository name must be lowercase [a-z0-9._-/]"));
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        ImageRef::parse(s).expect("parses").to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(full("web:v1"), "docker.io/library/web:v1");
        assert_eq!(full("web"), "docker.io/library/web:latest");
        assert_eq!(full("org/app"), "docker.io/org/app:latest");
        assert_eq!(
            full("index.docker.io/library/web:v1"),
            "docker.io/library/web:v1"
        );
        assert_eq!(full("host:5000/web"), "host:5000/web:latest");
        assert_eq!(full("127.0.0.1:5000/web:v1"), "127.0.0.1:5000/web:v1");
        assert_eq!(full("localhost/a/b:c"), "localhost/a/b:c");
        assert_eq!(full("ghcr.io/o/r:1.2-x_y"), "ghcr.io/o/r:1.2-x_y");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            full(&format!("web@{d}")),
            format!("docker.io/library/web@{d}")
        );
        assert_eq!(full(&format!("h:1/web:v1@{d}")), format!("h:1/web:v1@{d}"));
        let r = ImageRef::parse("host:5000/web").expect("parses");
        assert_eq!(r.registry, "host:5000");
        assert_eq!(r.repository, "web");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.name(), "host:5000/web");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Web:v1",
            "web:",
            "web:-x",
            "web@sha256:abc",
            "web@md5:aaaa",
            "a//b",
            "host:5000/",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
