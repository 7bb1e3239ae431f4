//! `X-Hub-Signature-256` checking for `POST /api/v1/hooks/git`.
//!
//! Stand-in for `crate::source::webhook::verify_signature` (same signature), which the source
//! stage will own; switch to it once it lands.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("malformed X-Hub-Signature-256 header (expected sha256=<hex>)")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// Checks `header` (`sha256=<hex HMAC-SHA256 of body>`) in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex_mac = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(WebhookError::Malformed)?;
    let expected = hex::decode(hex_mac).map_err(|_| WebhookError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn good_and_bad_signatures() {
        let sig = sign(b"s3cret", b"{}");
        assert_eq!(verify_signature(b"s3cret", b"{}", Some(&sig)), Ok(()));
        assert_eq!(
            verify_signature(b"other", b"{}", Some(&sig)),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s3cret", b"{ }", Some(&sig)),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s3cret", b"{}", None),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify_signature(b"s3cret", b"{}", Some("sha1=ab")),
            Err(WebhookError::Malformed)
        );
        assert_eq!(
            verify_signature(b"s3cret", b"{}", Some("sha256=zz")),
            Err(WebhookError::Malformed)
        );
    }
}
