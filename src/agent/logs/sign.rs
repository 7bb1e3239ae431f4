//! Requests from the control plane to an agent, signed with the cluster's join token without
//! sending it: `Authorization: TendHMAC ts=<unix seconds>,sig=<hex>`, where `sig` is
//! HMAC-SHA256(join token, "METHOD\nPATH?QUERY\nTS"). A signature covers exactly one method
//! and path-and-query, and an agent refuses a timestamp more than [`MAX_SKEW`] seconds away
//! from its clock, so a captured header is worth one request for about a minute.

use crate::source::webhook;

/// The `Authorization` scheme.
pub const SCHEME: &str = "TendHMAC";
/// How far (seconds, either way) a request's timestamp may be from the agent's clock.
pub const MAX_SKEW: i64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing Authorization header (the control plane signs with {SCHEME} ts=...,sig=...)")]
    Missing,
    #[error("Authorization header is not \"{SCHEME} ts=<unix seconds>,sig=<hex>\"")]
    Malformed,
    #[error(
        "request timestamp {ts} is {skew} s away from the node's clock (at most {MAX_SKEW} s): \
         are the clocks of the control plane and the node in sync?"
    )]
    Skew { ts: i64, skew: i64 },
    #[error("signature does not match the request and the cluster's join token")]
    Mismatch,
}

fn message(method: &str, path_and_query: &str, ts: i64) -> Vec<u8> {
    format!("{method}\n{path_and_query}\n{ts}").into_bytes()
}

/// The `Authorization` header value for `method path_and_query` at unix time `ts`.
pub fn sign(key: &[u8], method: &str, path_and_query: &str, ts: i64) -> String {
    let signed = webhook::sign(key, &message(method, path_and_query, ts));
    let hex = signed.strip_prefix("sha256=").unwrap_or(&signed);
    format!("{SCHEME} ts={ts},sig={hex}")
}

/// Checks an `Authorization` header against the request and the agent's clock `now` (unix
/// seconds); the signature is compared in constant time.
pub fn verify(
    key: &[u8],
    method: &str,
    path_and_query: &str,
    header: Option<&str>,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let (scheme, params) = header.split_once(' ').ok_or(SignatureError::Malformed)?;
    if scheme != SCHEME {
        return Err(SignatureError::Malformed);
    }
    let (mut ts, mut sig) = (None, None);
    for part in params.split(',') {
        match part.trim().split_once('=') {
            Some(("ts", v)) => ts = v.parse::<i64>().ok(),
            Some(("sig", v)) => sig = Some(v),
            _ => return Err(SignatureError::Malformed),
        }
    }
    let (Some(ts), Some(sig)) = (ts, sig) else {
        return Err(SignatureError::Malformed);
    };
    let skew = now.saturating_sub(ts).saturating_abs();
    if skew > MAX_SKEW {
        return Err(SignatureError::Skew { ts, skew });
    }
    let expected = format!("sha256={sig}");
    match webhook::verify_signature(key, &message(method, path_and_query, ts), Some(&expected)) {
        Ok(()) => Ok(()),
        Err(webhook::WebhookError::Mismatch) => Err(SignatureError::Mismatch),
        Err(_) => Err(SignatureError::Malformed),
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"join-token";
    const PATH: &str = "/containerLogs/default/web-1/web?tailLines=10";

    #[test]
    fn a_signed_request_verifies() {
        let header = sign(KEY, "GET", PATH, 1_000);
        assert!(header.starts_with("TendHMAC ts=1000,sig="), "{header}");
        assert_eq!(verify(KEY, "GET", PATH, Some(&header), 1_000), Ok(()));
        // Within the allowed skew, either way.
        assert_eq!(verify(KEY, "GET", PATH, Some(&header), 1_060), Ok(()));
        assert_eq!(verify(KEY, "GET", PATH, Some(&header), 940), Ok(()));
    }

    #[test]
    fn another_key_or_a_changed_signature_is_refused() {
        let header = sign(b"other-token", "GET", PATH, 1_000);
        assert_eq!(
            verify(KEY, "GET", PATH, Some(&header), 1_000),
            Err(SignatureError::Mismatch)
        );
        let good = sign(KEY, "GET", PATH, 1_000);
        let last = good.chars().last().unwrap_or('0');
        let flipped = format!(
            "{}{}",
            &good[..good.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        assert_eq!(
            verify(KEY, "GET", PATH, Some(&flipped), 1_000),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_signature_is_for_one_path_method_and_time() {
        let header = sign(KEY, "GET", PATH, 1_000);
        for (method, path) in [
            ("GET", "/containerLogs/default/web-1/db?tailLines=10"),
            ("GET", "/containerLogs/default/web-1/web"),
            (
                "GET",
                "/containerLogs/default/web-1/web?tailLines=10&previous=true",
            ),
            ("POST", PATH),
        ] {
            assert_eq!(
                verify(KEY, method, path, Some(&header), 1_000),
                Err(SignatureError::Mismatch),
                "{method} {path}"
            );
        }
        // Moving the timestamp breaks the signature too.
        let moved = header.replace("ts=1000", "ts=1001");
        assert_eq!(
            verify(KEY, "GET", PATH, Some(&moved), 1_000),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_or_future_timestamps_are_refused() {
        let header = sign(KEY, "GET", PATH, 1_000);
        assert_eq!(
            verify(KEY, "GET", PATH, Some(&header), 1_061),
            Err(SignatureError::Skew {
                ts: 1_000,
                skew: 61
            })
        );
        assert_eq!(
            verify(KEY, "GET", PATH, Some(&header), 900),
            Err(SignatureError::Skew {
                ts: 1_000,
                skew: 100
            })
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(
            verify(KEY, "GET", PATH, None, 1_000),
            Err(SignatureError::Missing)
        );
        for header in [
            "Bearer abc",
            "TendHMAC",
            "TendHMAC ts=1000",
            "TendHMAC sig=00",
            "TendHMAC ts=x,sig=00",
            "TendHMAC ts=1000,sig=zz",
            "TendHMAC ts=1000,sig=00,extra=1",
        ] {
            assert_eq!(
                verify(KEY, "GET", PATH, Some(header), 1_000),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
    }
}
