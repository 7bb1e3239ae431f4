//! Bounds on what one client can cost the server: body size, request time (the body read
//! included), the time to send a request's head, open connections, requests in flight, a
//! request rate per client address, and open watches per client.

use super::status::ApiError;
use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body (413 beyond).
    pub max_body_bytes: usize,
    /// Time to produce a response's head, reading the request's body included, so a body
    /// sent byte by byte is cut off; a watch's stream is not bounded by it (504 beyond).
    pub request_timeout: Duration,
    /// Time a connection may take to send a request's head (request line and headers); the
    /// connection is closed beyond it. Also bounds how long an idle keep-alive connection is
    /// kept, and so a client that connects and sends nothing, or headers byte by byte.
    pub header_read_timeout: Duration,
    /// Connections open at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Requests being handled at once, across all clients (429 beyond).
    pub max_in_flight: usize,
    /// Sustained requests per second from one client address (token bucket; 429 beyond).
    pub rate_per_second: f64,
    /// Burst of requests one client address may make above the sustained rate.
    pub rate_burst: f64,
    /// Open watches per client: per identity (the token's owner) and client address, so
    /// that nodes sharing the join token each get their own (429 beyond).
    pub max_watches_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_in_flight: 512,
            rate_per_second: 500.0,
            rate_burst: 1000.0,
            max_watches_per_client: 64,
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

/// Open-watch counts, one per client key (an identity and a client address). Keys with no
/// open watch are forgotten, so the table holds only the clients watching now.
pub struct WatchSlots<K> {
    per_client: usize,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

/// One open watch of a client, given back when dropped (when the watch's stream ends).
pub struct WatchSlot<K: Eq + Hash> {
    key: Option<K>,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash + Clone> WatchSlots<K> {
    pub fn new(per_client: usize) -> Self {
        WatchSlots {
            per_client,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot held for the life of one watch; `None` when `key` has too many open.
    pub fn try_take(&self, key: K) -> Option<WatchSlot<K>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.per_client {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(WatchSlot {
            key: Some(key),
            open: Arc::clone(&self.open),
        })
    }

    /// Clients with at least one open watch.
    pub fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<K: Eq + Hash> Drop for WatchSlot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&key);
            }
        }
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
    fn watch_slots_are_per_client_and_come_back() {
        use crate::server::Identity;
        let here = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let there = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let slots = WatchSlots::new(2);
        let first = slots.try_take((Identity::Join, here));
        let second = slots.try_take((Identity::Join, here));
        assert!(first.is_some() && second.is_some());
        assert!(slots.try_take((Identity::Join, here)).is_none());
        // Another node on the same token, and another identity at the same address.
        let other_node = slots.try_take((Identity::Join, there));
        assert!(other_node.is_some());
        assert!(slots.try_take((Identity::Admin, here)).is_some());
        drop(first);
        let again = slots.try_take((Identity::Join, here));
        assert!(again.is_some());
        drop((second, again, other_node));
        assert_eq!(
            slots.clients(),
            0,
            "clients with no open watch are forgotten"
        );
    }

    #[test]
    fn a_zero_cap_refuses_and_keeps_nothing() {
        let slots = WatchSlots::new(0);
        assert!(slots.try_take("a").is_none());
        assert_eq!(slots.clients(), 0);
    }

    #[tokio::test]
    async fn body_over_limit_is_413() {
        let err = read_body(Body::from(vec![0u8; 11]), 10).await.err();
        assert_eq!(err.map(|e| e.code.as_u16()), Some(413));
        let ok = read_body(Body::from(vec![0u8; 10]), 10).await.ok();
        assert_eq!(ok.map(|b| b.len()), Some(10));
    }
}
