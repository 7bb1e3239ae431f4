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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::runtime::FakeClock;
    use crate::store::memory::MemoryStore;

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
}
