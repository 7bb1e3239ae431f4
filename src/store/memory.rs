//! The in-memory store for controller tests, and the op semantics every backend applies
//! (`apply_transaction`), so that the backends cannot drift apart: a backend only says how to
//! read and write encoded objects inside its own transaction.

use super::watch::{EncodedEvent, WatchEventType, WatchLimits, WatchLog};
use super::{Committed, Op, Store, StoreError, Watch};
use crate::api::{Kind, ObjectKey};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

/// A store held in a `BTreeMap`, with the same semantics as the durable ones.
pub struct MemoryStore {
    objects: Mutex<Objects>,
    log: WatchLog,
}

struct Objects {
    by_key: BTreeMap<String, Arc<[u8]>>,
    resource_version: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_watch_limits(WatchLimits::default())
    }

    /// A store whose watch log keeps the most recent events within `limits`.
    pub fn with_watch_limits(limits: WatchLimits) -> Self {
        MemoryStore {
            objects: Mutex::new(Objects {
                by_key: BTreeMap::new(),
                resource_version: 0,
            }),
            log: WatchLog::new(0, limits),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let storage_key = key.storage_key();
        let objects = self.lock();
        objects
            .by_key
            .get(&storage_key)
            .map(|bytes| decode(&storage_key, bytes))
            .transpose()
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        super::list_by_visit(self, kind, namespace)
    }

    fn visit(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        each: &mut dyn FnMut(Value),
    ) -> Result<u64, StoreError> {
        // The stored bytes are shared: take them under the lock, parse after it.
        let (stored, rv) = {
            let objects = self.lock();
            let (start, end) = key_range(kind, namespace);
            let stored: Vec<(String, Arc<[u8]>)> = objects
                .by_key
                .range(start..end)
                .map(|(key, bytes)| (key.clone(), bytes.clone()))
                .collect();
            (stored, objects.resource_version)
        };
        for (key, bytes) in stored {
            each(decode(&key, &bytes)?);
        }
        Ok(rv)
    }

    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        let mut objects = self.lock();
        if ops.is_empty() {
            return Ok(Committed {
                resource_version: objects.resource_version,
                objects: Vec::new(),
            });
        }
        let rv = objects.resource_version + 1;
        let mut staging = Overlay {
            base: &objects.by_key,
            written: HashMap::new(),
        };
        let (committed, events) = apply_transaction(ops, rv, &mut staging)?;
        let written = staging.written;
        for (key, bytes) in written {
            match bytes {
                Some(bytes) => objects.by_key.insert(key, bytes),
                None => objects.by_key.remove(&key),
            };
        }
        objects.resource_version = rv;
        // Appended under the lock, so the log stays in commit order.
        self.log.append(events);
        Ok(committed)
    }

    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError> {
        self.log.subscribe(from_rv)
    }

    fn current_rv(&self) -> u64 {
        self.lock().resource_version
    }
}

/// Writes of a transaction not yet applied to the map.
struct Overlay<'a> {
    base: &'a BTreeMap<String, Arc<[u8]>>,
    written: HashMap<String, Option<Arc<[u8]>>>,
}

impl Staging for Overlay<'_> {
    fn read(&mut self, key: &str) -> Result<Option<Value>, StoreError> {
        let bytes = match self.written.get(key) {
            Some(written) => written.as_ref(),
            None => self.base.get(key),
        };
        bytes.map(|b| decode(key, b)).transpose()
    }

    fn write(&mut self, key: &str, encoded: Option<Arc<[u8]>>) -> Result<(), StoreError> {
        self.written.insert(key.to_string(), encoded);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Op semantics shared by every backend.

/// The objects of one backend transaction, as `apply_transaction` sees them. Reads see the
/// transaction's own earlier writes.
pub(crate) trait Staging {
    fn read(&mut self, key: &str) -> Result<Option<Value>, StoreError>;
    /// Stores the encoded object under `key`, or deletes the key (`None`).
    fn write(&mut self, key: &str, encoded: Option<Arc<[u8]>>) -> Result<(), StoreError>;
}

/// Applies `ops` in order as the transaction with resourceVersion `rv`. On error the caller
/// must discard everything written to `staging`.
pub(crate) fn apply_transaction(
    ops: Vec<Op>,
    rv: u64,
    staging: &mut impl Staging,
) -> Result<(Committed, Vec<EncodedEvent>), StoreError> {
    let stamp = Stamp {
        resource_version: rv,
        now: crate::api::now_rfc3339(),
    };
    let mut objects = Vec::with_capacity(ops.len());
    let mut events: Vec<(String, EncodedEvent)> = Vec::with_capacity(ops.len());
    for op in ops {
        let key = op_key(&op)?;
        let storage_key = key.storage_key();
        let current = staging.read(&storage_key)?;
        let change = apply_op(op, &key, current, &stamp)?;
        let encoded = encode(&change.object);
        let stored = (change.event_type != WatchEventType::Deleted).then(|| Arc::clone(&encoded));
        staging.write(&storage_key, stored)?;
        events.push((
            storage_key,
            EncodedEvent {
                event_type: change.event_type,
                kind: key.kind,
                resource_version: rv,
                object: encoded,
            },
        ));
        objects.push(change.object);
    }
    Ok((
        Committed {
            resource_version: rv,
            objects,
        },
        coalesce(events),
    ))
}

/// One event per object and transaction, as Kubernetes gives: a transaction that writes an
/// object twice (the scheduler binds a pod and sets its PodScheduled condition) would
/// otherwise send two events at one resourceVersion, the first with a state that never
/// existed on its own, and a watcher resuming from that resourceVersion would miss the
/// second. The object is its last state; the type says what changed over the transaction:
/// created (ADDED), created and deleted (no event), deleted then created (MODIFIED).
pub(crate) fn coalesce(events: Vec<(String, EncodedEvent)>) -> Vec<EncodedEvent> {
    use WatchEventType::{Added, Deleted, Modified};
    let mut slots: Vec<Option<EncodedEvent>> = Vec::with_capacity(events.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for (key, event) in events {
        let Some(&at) = index.get(&key) else {
            index.insert(key, slots.len());
            slots.push(Some(event));
            continue;
        };
        let first = slots[at].as_ref().map(|e| e.event_type);
        let event_type = match (first, event.event_type) {
            (Some(Added), Deleted) | (None, Deleted) => None,
            (Some(Added), _) | (None, _) => Some(Added),
            (Some(Deleted), Added) => Some(Modified),
            (Some(_), later) => Some(later),
        };
        slots[at] = event_type.map(|event_type| EncodedEvent {
            event_type,
            ..event
        });
    }
    slots.into_iter().flatten().collect()
}

/// What the store stamps on the objects of one transaction.
pub(crate) struct Stamp {
    pub resource_version: u64,
    /// RFC 3339, for `creationTimestamp`.
    pub now: String,
}

/// What one op does to one object.
pub(crate) struct Change {
    pub event_type: WatchEventType,
    /// The object as stored after the op (for a delete, its last state).
    pub object: Value,
}

/// The key an op writes.
pub(crate) fn op_key(op: &Op) -> Result<ObjectKey, StoreError> {
    match op {
        Op::Create(object) | Op::Put { object, .. } => object_key(object),
        Op::PutStatus { key, .. } | Op::Delete { key, .. } => Ok(key.clone()),
    }
}

fn object_key(object: &Value) -> Result<ObjectKey, StoreError> {
    if let Some(key) = ObjectKey::of(object) {
        return Ok(key);
    }
    let reason = match object.get("kind").and_then(Value::as_str) {
        None => "missing kind".to_string(),
        Some(kind) if Kind::from_name(kind).is_none() => format!("unknown kind {kind:?}"),
        Some(kind) => format!("{kind} without metadata.name"),
    };
    Err(StoreError::Invalid { reason })
}

/// The pure heart of the store: the object `op` leaves at `key`, given the `current` one.
pub(crate) fn apply_op(
    op: Op,
    key: &ObjectKey,
    current: Option<Value>,
    stamp: &Stamp,
) -> Result<Change, StoreError> {
    match (op, current) {
        (Op::Create(_), Some(_)) => Err(StoreError::AlreadyExists {
            key: key.storage_key(),
        }),
        (Op::Create(object), None)
        | (
            Op::Put {
                object,
                expect_rv: None,
            },
            None,
        ) => Ok(Change {
            event_type: WatchEventType::Added,
            object: created(object, key, stamp)?,
        }),
        (Op::Put { object, expect_rv }, Some(old)) => {
            check_rv(key, &old, expect_rv)?;
            Ok(Change {
                event_type: WatchEventType::Modified,
                object: replaced(object, old, key, stamp)?,
            })
        }
        (
            Op::PutStatus {
                status, expect_rv, ..
            },
            Some(mut old),
        ) => {
            check_rv(key, &old, expect_rv)?;
            let fields = as_object(key, &mut old)?;
            fields.insert("status".into(), status);
            set_resource_version(key, &mut old, stamp)?;
            Ok(Change {
                event_type: WatchEventType::Modified,
                object: old,
            })
        }
        (Op::Delete { expect_rv, .. }, Some(mut old)) => {
            check_rv(key, &old, expect_rv)?;
            // Kubernetes hands out the deleted object with the deletion's resourceVersion.
            set_resource_version(key, &mut old, stamp)?;
            Ok(Change {
                event_type: WatchEventType::Deleted,
                object: old,
            })
        }
        (Op::Put { .. } | Op::PutStatus { .. } | Op::Delete { .. }, None) => {
            Err(StoreError::NotFound {
                key: key.storage_key(),
            })
        }
    }
}

fn check_rv(key: &ObjectKey, current: &Value, expect_rv: Option<u64>) -> Result<(), StoreError> {
    use crate::api::ObjectMeta;
    match expect_rv {
        Some(expected) if expected != current.resource_version() => Err(StoreError::Conflict {
            key: key.storage_key(),
            expected,
            found: current.resource_version(),
        }),
        _ => Ok(()),
    }
}

/// A new object: uid, creationTimestamp, generation 1.
fn created(mut object: Value, key: &ObjectKey, stamp: &Stamp) -> Result<Value, StoreError> {
    let meta = metadata(key, &mut object)?;
    meta.insert("uid".into(), Value::String(new_uid()));
    meta.insert("creationTimestamp".into(), Value::String(stamp.now.clone()));
    meta.insert("generation".into(), Value::from(1u64));
    set_namespace(key, meta);
    set_resource_version(key, &mut object, stamp)?;
    Ok(object)
}

/// `object` replacing `old`: old status, uid and creationTimestamp kept; generation bumped
/// when spec changed.
fn replaced(
    mut object: Value,
    mut old: Value,
    key: &ObjectKey,
    stamp: &Stamp,
) -> Result<Value, StoreError> {
    let spec_changed = object.get("spec") != old.get("spec");
    let old_fields = as_object(key, &mut old)?;
    let old_status = old_fields.remove("status");
    let old_meta = old_fields.get("metadata").and_then(Value::as_object);
    let kept = |field: &str| old_meta.and_then(|m| m.get(field)).cloned();
    let uid = kept("uid");
    let created_at = kept("creationTimestamp");
    let generation = kept("generation").and_then(|g| g.as_u64()).unwrap_or(1);

    let fields = as_object(key, &mut object)?;
    match old_status {
        Some(status) => fields.insert("status".into(), status),
        None => fields.remove("status"),
    };
    let meta = metadata(key, &mut object)?;
    for (field, value) in [("uid", uid), ("creationTimestamp", created_at)] {
        match value {
            Some(value) => meta.insert(field.into(), value),
            None => meta.remove(field),
        };
    }
    let generation = if spec_changed {
        generation + 1
    } else {
        generation
    };
    meta.insert("generation".into(), Value::from(generation));
    set_namespace(key, meta);
    set_resource_version(key, &mut object, stamp)?;
    Ok(object)
}

fn as_object<'a>(
    key: &ObjectKey,
    object: &'a mut Value,
) -> Result<&'a mut Map<String, Value>, StoreError> {
    object.as_object_mut().ok_or_else(|| StoreError::Invalid {
        reason: format!("{}: not a JSON object", key.storage_key()),
    })
}

fn metadata<'a>(
    key: &ObjectKey,
    object: &'a mut Value,
) -> Result<&'a mut Map<String, Value>, StoreError> {
    as_object(key, object)?
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Invalid {
            reason: format!("{}: metadata is not an object", key.storage_key()),
        })
}

/// The stored namespace is the one of the key (`default` when the body had none).
fn set_namespace(key: &ObjectKey, meta: &mut Map<String, Value>) {
    if key.kind.namespaced() {
        meta.insert("namespace".into(), Value::String(key.namespace.clone()));
    } else {
        meta.remove("namespace");
    }
}

/// Kubernetes writes resourceVersion as a string.
fn set_resource_version(
    key: &ObjectKey,
    object: &mut Value,
    stamp: &Stamp,
) -> Result<(), StoreError> {
    metadata(key, object)?.insert(
        "resourceVersion".into(),
        Value::String(stamp.resource_version.to_string()),
    );
    Ok(())
}

/// A random UUID in the version 4 format.
fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6],
        b[7],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// The storage keys of a kind (in one namespace): `[start, end)`. `'0'` follows `'/'`.
pub(crate) fn key_range(kind: Kind, namespace: Option<&str>) -> (String, String) {
    let prefix = match namespace {
        Some(ns) if kind.namespaced() => format!("{}/{ns}", kind.name()),
        _ => kind.name().to_string(),
    };
    (format!("{prefix}/"), format!("{prefix}0"))
}

/// Parses a stored object. Goes through `Value::from_str`, which serde_json compiles itself:
/// the generic `from_slice::<Value>` would be compiled unoptimised in debug builds, 3x slower.
pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    let not_json = |reason: String| StoreError::Backend {
        path: key.to_string(),
        reason: format!("stored object is not JSON: {reason}"),
    };
    let text = std::str::from_utf8(bytes).map_err(|e| not_json(e.to_string()))?;
    Value::from_str(text).map_err(|e| not_json(e.to_string()))
}

/// The stored form of an object: compact JSON (`Display` of `Value`, for the same reason as
/// `decode`; it cannot fail, keys being strings).
pub(crate) fn encode(object: &Value) -> Arc<[u8]> {
    Arc::from(object.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp(rv: u64) -> Stamp {
        Stamp {
            resource_version: rv,
            now: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_transaction_gives_one_event_per_object() {
        use WatchEventType::{Added, Deleted, Modified};
        let event = |key: &str, t: WatchEventType, body: &str| {
            (
                key.to_string(),
                EncodedEvent {
                    event_type: t,
                    kind: Kind::Pod,
                    resource_version: 7,
                    object: Arc::from(body.as_bytes()),
                },
            )
        };
        let shape = |events: Vec<EncodedEvent>| -> Vec<(WatchEventType, String)> {
            events
                .into_iter()
                .map(|e| {
                    (
                        e.event_type,
                        String::from_utf8_lossy(&e.object).into_owned(),
                    )
                })
                .collect()
        };
        // Bind (spec) then status: one MODIFIED with the final state.
        let bind = coalesce(vec![
            event("p", Modified, "spec"),
            event("q", Added, "q"),
            event("p", Modified, "spec+status"),
        ]);
        assert_eq!(
            shape(bind),
            [(Modified, "spec+status".into()), (Added, "q".into())]
        );
        assert_eq!(
            shape(coalesce(vec![
                event("p", Added, "a"),
                event("p", Modified, "b")
            ])),
            [(Added, "b".into())]
        );
        assert!(coalesce(vec![event("p", Added, "a"), event("p", Deleted, "a")]).is_empty());
        assert_eq!(
            shape(coalesce(vec![
                event("p", Deleted, "a"),
                event("p", Added, "b")
            ])),
            [(Modified, "b".into())]
        );
        assert_eq!(
            shape(coalesce(vec![
                event("p", Added, "a"),
                event("p", Deleted, "a"),
                event("p", Added, "c"),
            ])),
            [(Added, "c".into())]
        );
    }

    #[test]
    fn uid_has_uuid_v4_shape() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert!(matches!(&uid[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn put_keeps_status_and_identity() {
        let key = ObjectKey::new(Kind::Deployment, "default", "web");
        let old = json!({"kind": "Deployment", "metadata": {"name": "web", "namespace": "default",
            "uid": "u", "creationTimestamp": "t", "generation": 3, "resourceVersion": "7"},
            "spec": {"replicas": 1}, "status": {"ready": 1}});
        let body = json!({"kind": "Deployment", "metadata": {"name": "web", "uid": "other"},
            "spec": {"replicas": 2}, "status": {"ready": 9}});
        let put = Op::Put {
            object: body,
            expect_rv: Some(7),
        };
        let change = apply_op(put, &key, Some(old), &stamp(8)).expect("put");
        let meta = &change.object["metadata"];
        assert_eq!(meta["uid"], "u");
        assert_eq!(meta["creationTimestamp"], "t");
        assert_eq!(meta["generation"], 4);
        assert_eq!(meta["resourceVersion"], "8");
        assert_eq!(meta["namespace"], "default");
        assert_eq!(change.object["status"], json!({"ready": 1}));
    }

    #[test]
    fn key_range_does_not_leak_into_neighbours() {
        let (start, end) = key_range(Kind::Pod, Some("a"));
        assert!(start.as_str() <= "Pod/a/x" && "Pod/a/x" < end.as_str());
        assert!(!("Pod/ab/x" >= start.as_str() && "Pod/ab/x" < end.as_str()));
    }
}
