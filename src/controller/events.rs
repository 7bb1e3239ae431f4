//! Events (`v1` Event objects) about the objects controllers act on, aggregated as Kubernetes
//! does: the same reason and message for the same object bumps `count` and `lastTimestamp`.

use crate::api::{Kind, ObjectKey};
use crate::controller::runtime::Clock;
use crate::store::{Op, Store, StoreError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

#[derive(Clone)]
pub struct EventRecorder {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl EventRecorder {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        EventRecorder { store, clock }
    }

    /// Records an event about `object` (a stored object: its kind, name, namespace and uid are
    /// used). `component` is the reporter (`deployment-controller`, `default-scheduler`, ...).
    pub fn record(
        &self,
        object: &Value,
        event_type: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) -> Result<(), StoreError> {
        let Some(involved) = ObjectKey::of(object) else {
            return Ok(());
        };
        let namespace = if involved.kind.namespaced() {
            involved.namespace.clone()
        } else {
            "default".to_string()
        };
        let digest = Sha256::digest(format!("{}\n{reason}\n{message}", involved.storage_key()));
        let name = format!("{}.{}", involved.name, hex::encode(&digest[..8]));
        let key = ObjectKey::new(Kind::Event, &namespace, &name);
        let now = self
            .clock
            .now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| self.clock.now())
            .to_string();
        let existing = self.store.get(&key)?;
        let (count, first) = match &existing {
            Some(e) => (
                e.get("count").and_then(Value::as_u64).unwrap_or(1) + 1,
                e.get("firstTimestamp")
                    .cloned()
                    .unwrap_or_else(|| json!(now)),
            ),
            None => (1, json!(now)),
        };
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.kind.api_version(),
                "kind": involved.kind.name(),
                "name": involved.name,
                "namespace": if involved.kind.namespaced() { Value::from(involved.namespace.clone()) } else { Value::Null },
                "uid": object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "count": count,
            "firstTimestamp": first,
            "lastTimestamp": now,
            "source": {"component": component},
        });
        tracing::debug!(object = %involved, reason, "{message}");
        self.store.commit(vec![Op::Put {
            object: event,
            expect_rv: None,
        }])?;
        Ok(())
    }
}

/// Deletes per store transaction when expired Events are collected.
const DELETES_PER_TRANSACTION: usize = 200;

/// Whether `event` last happened (`lastTimestamp`, else `eventTime`, else `firstTimestamp`)
/// before `cutoff`. An Event whose time cannot be read is kept: nothing is deleted on a guess.
fn happened_before(event: &Value, cutoff: jiff::Timestamp) -> bool {
    ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|f| event.get(*f).and_then(Value::as_str))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t < cutoff)
}

/// The time before which an Event has expired, or `None` when `now - ttl` is out of range
/// (then nothing expires).
fn cutoff(now: jiff::Timestamp, ttl: std::time::Duration) -> Option<jiff::Timestamp> {
    now.checked_sub(jiff::SignedDuration::try_from(ttl).ok()?)
        .ok()
}

/// The key and resourceVersion of `event` when it happened before `cutoff`.
fn expired_key(event: &Value, cutoff: jiff::Timestamp) -> Option<(ObjectKey, u64)> {
    if !happened_before(event, cutoff) {
        return None;
    }
    Some((
        ObjectKey::of(event)?,
        crate::api::ObjectMeta::resource_version(event),
    ))
}

/// Deletes the Events that expired (see `happened_before`), as kube-apiserver's event TTL does, so
/// that the store does not grow with every event ever recorded. Each delete is guarded by the
/// resourceVersion read: an Event that happened again meanwhile is kept. Returns how many
/// were deleted.
pub fn collect_expired(
    store: &dyn Store,
    now: jiff::Timestamp,
    ttl: std::time::Duration,
) -> Result<usize, StoreError> {
    let Some(cutoff) = cutoff(now, ttl) else {
        return Ok(0);
    };
    // Visited one at a time: the store may hold tens of thousands of Events (an hour of
    // them), and listing parses all of them at once, which once a minute raised serve's
    // resident memory by as much as every Event's JSON tree.
    let mut expired = Vec::new();
    store.visit(Kind::Event, None, &mut |event| {
        expired.extend(expired_key(&event, cutoff));
    })?;
    let mut deleted = 0;
    for batch in expired.chunks(DELETES_PER_TRANSACTION) {
        let ops = |batch: &[(ObjectKey, u64)]| -> Vec<Op> {
            batch
                .iter()
                .map(|(key, rv)| Op::Delete {
                    key: key.clone(),
                    expect_rv: Some(*rv),
                })
                .collect()
        };
        match store.commit(ops(batch)) {
            Ok(_) => deleted += batch.len(),
            // One of them changed or went meanwhile: the others one by one.
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                for one in batch.chunks(1) {
                    match store.commit(ops(one)) {
                        Ok(_) => deleted += 1,
                        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::runtime::FakeClock;
    use crate::store::memory::MemoryStore;

    /// `tend serve --event-ttl`'s default, as kube-apiserver's.
    const EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

    #[test]
    fn repeated_events_are_counted() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let rec = EventRecorder::new(
            store.clone(),
            Arc::new(FakeClock::new(jiff::Timestamp::UNIX_EPOCH)),
        );
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default", "uid": "u1"}});
        rec.record(
            &d,
            NORMAL,
            "ScalingReplicaSet",
            "Scaled up replica set web-abc to 3",
            "deployment-controller",
        )
        .unwrap();
        rec.record(
            &d,
            NORMAL,
            "ScalingReplicaSet",
            "Scaled up replica set web-abc to 3",
            "deployment-controller",
        )
        .unwrap();
        rec.record(
            &d,
            NORMAL,
            "ScalingReplicaSet",
            "Scaled up replica set web-abc to 4",
            "deployment-controller",
        )
        .unwrap();
        let (events, _) = store.list(Kind::Event, Some("default")).unwrap();
        assert_eq!(events.len(), 2);
        let counted = events
            .iter()
            .find(|e| e["message"] == "Scaled up replica set web-abc to 3")
            .unwrap();
        assert_eq!(counted["count"], 2);
        assert_eq!(counted["involvedObject"]["kind"], "Deployment");
        assert_eq!(counted["involvedObject"]["uid"], "u1");
    }

    fn event(name: &str, last: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "R", "message": name,
            "firstTimestamp": last, "lastTimestamp": last})
    }

    #[test]
    fn events_older_than_the_ttl_are_collected_and_the_rest_kept() {
        let store = MemoryStore::new();
        let ops = [
            event("old", "2026-01-01T00:00:00Z"),
            event("edge", "2026-01-01T01:00:00Z"),
            event("new", "2026-01-01T01:30:00Z"),
            event("garbled", "yesterday"),
        ]
        .into_iter()
        .map(Op::Create)
        .collect();
        store.commit(ops).unwrap();
        let now: jiff::Timestamp = "2026-01-01T02:00:00Z".parse().unwrap();
        let names = |store: &MemoryStore| -> Vec<String> {
            let (events, _) = store.list(Kind::Event, None).unwrap();
            events
                .iter()
                .map(|e| {
                    e.pointer("/metadata/name")
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(collect_expired(&store, now, EVENT_TTL).unwrap(), 1);
        assert_eq!(names(&store), ["edge", "garbled", "new"]);
        // Nothing more is due: a second pass deletes nothing.
        assert_eq!(collect_expired(&store, now, EVENT_TTL).unwrap(), 0);
    }

    /// A store that refuses to list: what visits one object at a time works on it.
    struct NoList(MemoryStore);

    impl Store for NoList {
        fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
            self.0.get(key)
        }
        fn list(&self, kind: Kind, _: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
            Err(StoreError::Invalid {
                reason: format!("a list of every {kind} was asked for"),
            })
        }
        fn visit(
            &self,
            kind: Kind,
            ns: Option<&str>,
            each: &mut dyn FnMut(Value),
        ) -> Result<u64, StoreError> {
            self.0.visit(kind, ns, each)
        }
        fn commit(&self, ops: Vec<Op>) -> Result<crate::store::Committed, StoreError> {
            self.0.commit(ops)
        }
        fn watch(&self, from_rv: u64) -> Result<crate::store::Watch, StoreError> {
            self.0.watch(from_rv)
        }
        fn current_rv(&self) -> u64 {
            self.0.current_rv()
        }
    }

    #[test]
    fn expired_events_are_found_without_listing_them_all_at_once() {
        let store = NoList(MemoryStore::new());
        let ops = (0..(2 * DELETES_PER_TRANSACTION + 1))
            .map(|i| Op::Create(event(&format!("old-{i:03}"), "2026-01-01T00:00:00Z")))
            .chain([Op::Create(event("new", "2026-01-01T01:30:00Z"))])
            .collect();
        store.commit(ops).unwrap();
        let now: jiff::Timestamp = "2026-01-01T02:00:00Z".parse().unwrap();
        assert_eq!(
            collect_expired(&store, now, EVENT_TTL).unwrap(),
            2 * DELETES_PER_TRANSACTION + 1
        );
        let (left, _) = store.0.list(Kind::Event, None).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].pointer("/metadata/name").unwrap(), "new");
    }

    /// A store where Event "a" happens again just before the first transaction of deletes.
    struct Racing {
        inner: MemoryStore,
        raced: std::sync::atomic::AtomicBool,
    }

    impl Store for Racing {
        fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
            self.inner.get(key)
        }
        fn list(&self, kind: Kind, ns: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
            self.inner.list(kind, ns)
        }
        fn commit(&self, ops: Vec<Op>) -> Result<crate::store::Committed, StoreError> {
            if matches!(ops.first(), Some(Op::Delete { .. }))
                && !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                self.inner.commit(vec![Op::Put {
                    object: event("a", "2026-01-01T01:59:00Z"),
                    expect_rv: None,
                }])?;
            }
            self.inner.commit(ops)
        }
        fn watch(&self, from_rv: u64) -> Result<crate::store::Watch, StoreError> {
            self.inner.watch(from_rv)
        }
        fn current_rv(&self) -> u64 {
            self.inner.current_rv()
        }
    }

    #[test]
    fn an_event_that_happened_again_after_the_list_is_kept() {
        let store = Racing {
            inner: MemoryStore::new(),
            raced: Default::default(),
        };
        store
            .inner
            .commit(vec![
                Op::Create(event("a", "2026-01-01T00:00:00Z")),
                Op::Create(event("b", "2026-01-01T00:00:00Z")),
                Op::Create(event("c", "2026-01-01T00:00:00Z")),
            ])
            .unwrap();
        let now: jiff::Timestamp = "2026-01-01T02:00:00Z".parse().unwrap();
        // The batch of three fails on "a"; "b" and "c" are then deleted one by one.
        assert_eq!(collect_expired(&store, now, EVENT_TTL).unwrap(), 2);
        let (left, _) = store.list(Kind::Event, None).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].pointer("/metadata/name").unwrap(), "a");
    }
}
