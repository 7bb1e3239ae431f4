//! Webhook signatures: GitHub's `X-Hub-Signature-256: sha256=<hex>` convention, an HMAC-SHA256
//! of the request body with a shared secret, checked in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

const PREFIX: &str = "sha256=";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("missing {SIGNATURE_HEADER} header")]
    MissingHeader,
    #[error("{SIGNATURE_HEADER} header must start with \"sha256=\"")]
    WrongPrefix,
    #[error("{SIGNATURE_HEADER} header is not 64 hexadecimal digits after \"sha256=\"")]
    BadHex,
    #[error("signature does not match the body and the webhook secret")]
    Mismatch,
    #[error("webhook secret {path}: {reason}")]
    Secret { path: String, reason: String },
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the error case of `new_from_slice` cannot happen for it,
    // and an empty key is what `Hmac::new` would use if it did.
    Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()))
}

/// The header value for `body`: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks the `X-Hub-Signature-256` header value against the body, in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingHeader)?.trim();
    let digits = header
        .strip_prefix(PREFIX)
        .ok_or(WebhookError::WrongPrefix)?;
    let expected = hex::decode(digits).map_err(|_| WebhookError::BadHex)?;
    if expected.len() != 32 {
        return Err(WebhookError::BadHex);
    }
    let mut mac = mac(secret);
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::Mismatch)
}

/// Reads a webhook secret from a file, without the trailing newline editors add.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, WebhookError> {
    let err = |reason: String| WebhookError::Secret {
        path: path.display().to_string(),
        reason,
    };
    let mut secret = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(err("the file is empty".to_string()));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of GitHub's "Validating webhook deliveries" documentation.
    const GITHUB_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_documented_example() {
        assert_eq!(sign(GITHUB_SECRET, GITHUB_BODY), GITHUB_SIGNATURE);
        assert_eq!(
            verify_signature(GITHUB_SECRET, GITHUB_BODY, Some(GITHUB_SIGNATURE)),
            Ok(())
        );
    }

    #[test]
    fn round_trip() {
        let header = sign(b"s3cret", b"{\"ref\":\"refs/heads/main\"}");
        assert_eq!(
            verify_signature(b"s3cret", b"{\"ref\":\"refs/heads/main\"}", Some(&header)),
            Ok(())
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            verify_signature(GITHUB_SECRET, GITHUB_BODY, None),
            Err(WebhookError::MissingHeader)
        );
        let sha1 = "sha1=757107ea0eb2509fc211221cce984b8a37570b6d";
        assert_eq!(
            verify_signature(GITHUB_SECRET, GITHUB_BODY, Some(sha1)),
            Err(WebhookError::WrongPrefix)
        );
        assert_eq!(
            verify_signature(GITHUB_SECRET, GITHUB_BODY, Some("sha256=zz")),
            Err(WebhookError::BadHex)
        );
        assert_eq!(
            verify_signature(GITHUB_SECRET, GITHUB_BODY, Some("sha256=abcd")),
            Err(WebhookError::BadHex)
        );
        assert_eq!(
            verify_signature(b"another secret", GITHUB_BODY, Some(GITHUB_SIGNATURE)),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            verify_signature(GITHUB_SECRET, b"Hello, World?", Some(GITHUB_SIGNATURE)),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn secret_file_loses_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret(&path).is_err());
    }
}
