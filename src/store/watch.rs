//! The watch log shared by store backends: recent changes kept in memory, in resourceVersion
//! order, read by any number of watchers without per-watcher buffers (no event is dropped;
//! a watcher that falls behind the kept window gets `Gone` and lists again, as in Kubernetes).
//!
//! Events are kept as the JSON bytes the backend stored, not as parsed values: a serialized
//! object is several times smaller than a `serde_json::Value`, and the window is large.

use super::StoreError;
use crate::api::Kind;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

/// How many events a `WatchLog` keeps unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// How many bytes of objects a `WatchLog` keeps unless told otherwise: bounds the memory of
/// the log when objects are large (100,000 events of 2 KB would be 200 MB). With 100 nodes
/// writing their own and their pods' status every second (`tend bench load`, ~0.9 MB of
/// changes a second) 16 MiB is the last ~18 s, time enough for a watch broken by a restart or
/// a network blip to resume without listing again; at 64 MiB serve's memory grew by ~70 MiB
/// over the first minutes of that load, and a watcher that falls further behind lists again.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub event_type: WatchEventType,
    /// The object after the change (for `Deleted`, its last state).
    pub object: Value,
    pub resource_version: u64,
}

/// One change as the log keeps it: the object in its stored JSON encoding.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    pub event_type: WatchEventType,
    /// The object's kind (from its key), so that watchers of other kinds pass it by without
    /// reading the JSON.
    pub kind: Kind,
    pub resource_version: u64,
    pub object: Arc<[u8]>,
}

impl EncodedEvent {
    /// The event with its object parsed.
    pub fn decode(&self) -> Result<WatchEvent, StoreError> {
        let object = serde_json::from_slice(&self.object).map_err(|e| StoreError::Backend {
            path: "watch log".into(),
            reason: format!(
                "event at resourceVersion {} is not JSON: {e}",
                self.resource_version
            ),
        })?;
        Ok(WatchEvent {
            event_type: self.event_type,
            object,
            resource_version: self.resource_version,
        })
    }
}

/// The recent changes of one store. Cheap to clone; clones share the log.
#[derive(Clone)]
pub struct WatchLog {
    shared: Arc<Shared>,
}

struct Shared {
    log: RwLock<Log>,
    /// Carries the sequence number one past the newest event; watchers wait on it.
    appended: tokio::sync::watch::Sender<u64>,
}

struct Log {
    events: VecDeque<EncodedEvent>,
    /// The sequence number (position since the log was created) of `events[0]`.
    first_seq: u64,
    /// Every event with a resourceVersion above this one is in `events`.
    complete_after: u64,
    /// The total size of the kept objects.
    bytes: usize,
    limits: WatchLimits,
}

impl Log {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }

    /// Drops the oldest transactions while the log is over either limit. Whole
    /// resourceVersions go at once, so the kept window never starts in the middle of a
    /// transaction, and the newest one always stays.
    fn trim(&mut self) {
        let Some(newest) = self.events.back().map(|e| e.resource_version) else {
            return;
        };
        while self.events.len() > self.limits.max_events || self.bytes > self.limits.max_bytes {
            let Some(oldest) = self.events.front().map(|e| e.resource_version) else {
                break;
            };
            if oldest >= newest {
                break;
            }
            while self
                .events
                .front()
                .is_some_and(|e| e.resource_version == oldest)
            {
                if let Some(event) = self.events.pop_front() {
                    self.first_seq += 1;
                    self.bytes = self.bytes.saturating_sub(event.object.len());
                }
            }
            self.complete_after = oldest;
        }
    }
}

/// How much a `WatchLog` keeps: the most recent transactions within both limits.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    pub max_events: usize,
    /// The total size of the kept objects' JSON.
    pub max_bytes: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            max_events: DEFAULT_CAPACITY,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl WatchLimits {
    /// At most `max_events` events, with the default byte limit.
    pub fn events(max_events: usize) -> Self {
        WatchLimits {
            max_events,
            ..WatchLimits::default()
        }
    }
}

impl WatchLog {
    /// An empty log for a store whose newest resourceVersion is `current_rv`.
    pub fn new(current_rv: u64, limits: WatchLimits) -> Self {
        let (appended, _) = tokio::sync::watch::channel(0);
        WatchLog {
            shared: Arc::new(Shared {
                log: RwLock::new(Log {
                    events: VecDeque::new(),
                    first_seq: 0,
                    complete_after: current_rv,
                    bytes: 0,
                    limits,
                }),
                appended,
            }),
        }
    }

    /// Records the changes of one committed transaction. Backends call this after each commit,
    /// in commit order, with resourceVersions that never go down.
    pub fn append(&self, events: impl IntoIterator<Item = EncodedEvent>) {
        let end = {
            let mut log = self.shared.log.write().unwrap_or_else(|e| e.into_inner());
            for event in events {
                log.bytes += event.object.len();
                log.events.push_back(event);
            }
            log.trim();
            log.end_seq()
        };
        self.shared.appended.send_replace(end);
    }

    /// Forgets every kept event because changes up to `current_rv` can no longer be told (the
    /// etcd backend after a compaction it could not resume across): every existing watcher gets
    /// `Gone` and lists again, and new watches start at `current_rv` or later.
    pub fn lose_history(&self, current_rv: u64) {
        let end = {
            let mut log = self.shared.log.write().unwrap_or_else(|e| e.into_inner());
            // One past the old end, so that even a watcher that had read everything is behind.
            log.first_seq = log.end_seq() + 1;
            log.events.clear();
            log.bytes = 0;
            log.complete_after = log.complete_after.max(current_rv);
            log.end_seq()
        };
        self.shared.appended.send_replace(end);
    }

    /// The oldest resourceVersion a watch can start from.
    pub fn oldest_rv(&self) -> u64 {
        self.shared
            .log
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .complete_after
    }

    /// A watch yielding every change with a resourceVersion above `from_rv`, in order.
    pub fn subscribe(&self, from_rv: u64) -> Result<Watch, StoreError> {
        let log = self.shared.log.read().unwrap_or_else(|e| e.into_inner());
        if from_rv < log.complete_after {
            return Err(StoreError::Gone {
                requested: from_rv,
                oldest: log.complete_after,
            });
        }
        // Events are sorted by resourceVersion: find the first one after `from_rv`.
        let skip = log
            .events
            .partition_point(|e| e.resource_version <= from_rv);
        let next_seq = log.first_seq + skip as u64;
        let appended = self.shared.appended.subscribe();
        drop(log);
        Ok(Watch {
            shared: Arc::clone(&self.shared),
            appended,
            next_seq,
            from_rv,
            seen_rv: from_rv,
        })
    }
}

/// A stream of changes after a resourceVersion. `Send`; one per task.
pub struct Watch {
    shared: Arc<Shared>,
    appended: tokio::sync::watch::Receiver<u64>,
    /// Sequence number of the next event to hand out.
    next_seq: u64,
    /// Events at or below this resourceVersion are skipped: a commit that was already
    /// listed may be appended to the log just after the watch started.
    from_rv: u64,
    seen_rv: u64,
}

impl Watch {
    /// The next change, waiting for one. `Gone` when the watcher fell out of the kept window.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        self.next_encoded().await?.decode()
    }

    /// The next change in its stored JSON encoding, waiting for one (for streaming it out, or
    /// filtering it, without parsing it whole).
    pub async fn next_encoded(&mut self) -> Result<EncodedEvent, StoreError> {
        loop {
            // Mark the current value seen before looking, so an append racing with the look
            // still wakes `changed()` below.
            self.appended.borrow_and_update();
            if let Some(event) = self.try_next_encoded()? {
                return Ok(event);
            }
            if self.appended.changed().await.is_err() {
                // The sender lives in `shared`, which this watch holds: never closed.
                return Err(StoreError::Backend {
                    path: "watch log".into(),
                    reason: "the store was closed".into(),
                });
            }
        }
    }

    /// The next change if one is already there, without waiting.
    pub fn try_next(&mut self) -> Result<Option<WatchEvent>, StoreError> {
        self.try_next_encoded()?.map(|e| e.decode()).transpose()
    }

    /// The next change `wanted` accepts by its kind and type, waiting for one. The others are
    /// passed by without parsing them (most watchers in serve look at a few kinds, and the
    /// pods' and nodes' status writes are most changes).
    pub async fn next_of(
        &mut self,
        wanted: impl Fn(Kind, WatchEventType) -> bool,
    ) -> Result<WatchEvent, StoreError> {
        loop {
            let event = self.next_encoded().await?;
            if wanted(event.kind, event.event_type) {
                return event.decode();
            }
        }
    }

    /// [`Watch::next_of`] without waiting: the next wanted change already there.
    pub fn try_next_of(
        &mut self,
        wanted: impl Fn(Kind, WatchEventType) -> bool,
    ) -> Result<Option<WatchEvent>, StoreError> {
        while let Some(event) = self.try_next_encoded()? {
            if wanted(event.kind, event.event_type) {
                return event.decode().map(Some);
            }
        }
        Ok(None)
    }

    /// The next change in its stored JSON encoding, without waiting (for streaming it out
    /// without parsing it).
    pub fn try_next_encoded(&mut self) -> Result<Option<EncodedEvent>, StoreError> {
        let log = self.shared.log.read().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.next_seq < log.first_seq {
                return Err(StoreError::Gone {
                    requested: self.seen_rv,
                    oldest: log.complete_after,
                });
            }
            let index = (self.next_seq - log.first_seq) as usize;
            let Some(event) = log.events.get(index) else {
                return Ok(None);
            };
            self.next_seq += 1;
            if event.resource_version > self.from_rv {
                self.seen_rv = event.resource_version;
                return Ok(Some(event.clone()));
            }
        }
    }

    /// The resourceVersion of the last change handed out (or the starting one). A replacement
    /// watch resumes from it once the events sharing that resourceVersion have been read.
    pub fn resource_version(&self) -> u64 {
        self.seen_rv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rv: u64) -> EncodedEvent {
        EncodedEvent {
            event_type: WatchEventType::Added,
            kind: Kind::Pod,
            resource_version: rv,
            object: Arc::from(format!("{{\"rv\":{rv}}}").into_bytes()),
        }
    }

    #[test]
    fn trims_whole_resource_versions() {
        let log = WatchLog::new(0, WatchLimits::events(3));
        log.append([event(1), event(2), event(2)]);
        log.append([event(3), event(3)]);
        // Capacity 3 drops rv 1 and both events of rv 2 (never half a transaction).
        assert_eq!(log.oldest_rv(), 2);
        assert!(matches!(
            log.subscribe(1),
            Err(StoreError::Gone {
                requested: 1,
                oldest: 2
            })
        ));
        let mut watch = log.subscribe(2).expect("subscribe");
        assert_eq!(
            watch.try_next().expect("next").map(|e| e.resource_version),
            Some(3)
        );
        assert_eq!(
            watch.try_next().expect("next").map(|e| e.resource_version),
            Some(3)
        );
        assert!(watch.try_next().expect("next").is_none());
    }

    #[test]
    fn keeps_the_newest_transaction_whatever_its_size() {
        let log = WatchLog::new(0, WatchLimits::events(2));
        log.append([event(1)]);
        log.append([event(2), event(2), event(2)]);
        assert_eq!(log.oldest_rv(), 1);
        let mut watch = log.subscribe(1).expect("subscribe");
        for _ in 0..3 {
            assert_eq!(
                watch.try_next().expect("next").map(|e| e.resource_version),
                Some(2)
            );
        }
    }

    #[test]
    fn byte_limit_trims_too() {
        let limits = WatchLimits {
            max_events: 100,
            max_bytes: 20,
        };
        let log = WatchLog::new(0, limits);
        for rv in 1..=5 {
            log.append([event(rv)]); // 8 bytes each
        }
        assert_eq!(log.oldest_rv(), 3);
    }

    #[test]
    fn late_append_of_listed_rv_is_skipped() {
        let log = WatchLog::new(0, WatchLimits::events(10));
        let mut watch = log.subscribe(1).expect("subscribe");
        log.append([event(1)]);
        log.append([event(2)]);
        assert_eq!(
            watch.try_next().expect("next").map(|e| e.resource_version),
            Some(2)
        );
    }

    #[test]
    fn lost_history_is_gone_for_every_watcher() {
        let log = WatchLog::new(0, WatchLimits::events(10));
        log.append([event(1)]);
        let mut behind = log.subscribe(0).expect("subscribe");
        let mut caught_up = log.subscribe(1).expect("subscribe");
        log.lose_history(5);
        assert!(matches!(behind.try_next(), Err(StoreError::Gone { .. })));
        assert!(matches!(caught_up.try_next(), Err(StoreError::Gone { .. })));
        assert!(matches!(
            log.subscribe(4),
            Err(StoreError::Gone { oldest: 5, .. })
        ));
        let mut fresh = log.subscribe(5).expect("subscribe");
        log.append([event(6)]);
        assert_eq!(
            fresh.try_next().expect("next").map(|e| e.resource_version),
            Some(6)
        );
    }

    #[test]
    fn falling_behind_is_gone() {
        let log = WatchLog::new(0, WatchLimits::events(2));
        let mut watch = log.subscribe(0).expect("subscribe");
        log.append([event(1)]);
        log.append([event(2)]);
        log.append([event(3)]);
        assert!(matches!(watch.try_next(), Err(StoreError::Gone { .. })));
    }
}
