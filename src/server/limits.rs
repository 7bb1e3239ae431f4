//! Bounds on what one client can cost the server: body size, request time, requests in
//! flight, a request rate per client address, and open watches per token.

use super::status::ApiError;
use super::tokens::Identity;
use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body (413 beyond).
    pub max_body_bytes: usize,
    /// Time to produce a response's head; a watch's stream is not bounded by it (504 beyond).
    pub request_timeout: Duration,
    /// Requests being handled at once, across all clients (429 beyond).
    pub max_in_flight: usize,
    /// Sustained requests per second from one client address (token bucket; 429 beyond).
    pub rate_per_second: f64,
    /// Burst of requests one client address may make above the sustained rate.
    pub rate_burst: f64,
    /// Open watches per token (429 beyond).
    pub max_watches_per_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 512,
            rate_per_second: 500.0,
            rate_burst: 1000.0,
            max_watches_per_token: 64,
        }
    }
}

/// Reads a whole request body, refusing it as soon as it passes `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// A token bucket per client address.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Past this many tracked addresses, buckets that have refilled completely are forgotten.
const MAX_TRACKED_CLIENTS: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client` at `now`; false when its bucket is empty.
    pub fn admit(&self, client: IpAddr, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() > MAX_TRACKED_CLIENTS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open-watch slots, one pool per token.
pub struct WatchSlots {
    admin: Arc<Semaphore>,
    join: Arc<Semaphore>,
}

impl WatchSlots {
    pub fn new(per_token: usize) -> Self {
        WatchSlots {
            admin: Arc::new(Semaphore::new(per_token)),
            join: Arc::new(Semaphore::new(per_token)),
        }
    }

    /// A slot held for the life of one watch; `None` when the token has too many open.
    pub fn try_take(&self, identity: Identity) -> Option<OwnedSemaphorePermit> {
        let pool = match identity {
            Identity::Admin => &self.admin,
            Identity::Join | Identity::Node(_) => &self.join,
        };
        pool.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let limiter = RateLimiter::new(10.0, 3.0);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let t0 = Instant::now();
        assert!(limiter.admit(ip, t0));
        assert!(limiter.admit(ip, t0));
        assert!(limiter.admit(ip, t0));
        assert!(!limiter.admit(ip, t0));
        assert!(limiter.admit(other, t0), "buckets are per address");
        // 10 tokens/s: one more after 100 ms.
        assert!(limiter.admit(ip, t0 + Duration::from_millis(100)));
        assert!(!limiter.admit(ip, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn watch_slots_are_per_token() {
        let slots = WatchSlots::new(1);
        let held = slots.try_take(Identity::Admin);
        assert!(held.is_some());
        assert!(slots.try_take(Identity::Admin).is_none());
        assert!(slots.try_take(Identity::Join).is_some());
        drop(held);
        assert!(slots.try_take(Identity::Admin).is_some());
    }

    #[tokio::test]
    async fn body_over_limit_is_413() {
        let err = read_body(Body::from(vec![0u8; 11]), 10).await.err();
        assert_eq!(err.map(|e| e.code.as_u16()), Some(413));
        let ok = read_body(Body::from(vec![0u8; 10]), 10).await.ok();
        assert_eq!(ok.map(|b| b.len()), Some(10));
    }
}
