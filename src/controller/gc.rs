//! The garbage collector, as Kubernetes' (background propagation, controller references
//! only): an object whose controlling ownerReference names an owner that is gone, or that
//! was replaced by a new object of the same name (another uid), is deleted. The ReplicaSets of
//! a deleted Deployment go first; their deletion then takes their pods (bound pods gracefully,
//! through their node). The EndpointSlices of a deleted Service go the same way.

use crate::api::pod::controller_of;
use crate::api::{Kind, ObjectKey, ObjectMeta};
use crate::controller::replicaset::pod_deletion;
use crate::controller::runtime::{Action, Context, ReconcileError, Reconciler};
use crate::store::{Op, StoreError, WatchEvent, WatchEventType};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Deletes ReplicaSets and Pods whose controlling owner is gone.
#[derive(Default)]
pub struct GarbageCollector {
    /// Owners just deleted, with the uids they had: their dependents are looked up by that
    /// uid (an indexed read), so that neither the many status changes of a ReplicaSet nor the
    /// creation of thousands of them lists every pod. A dependent whose owner went while
    /// tend was stopped is found by its own check at start (`initial_keys`).
    sweeps: Mutex<HashMap<ObjectKey, Vec<String>>>,
}

/// The kind an owner's dependents have.
fn dependent_kind(owner: Kind) -> Option<Kind> {
    match owner {
        Kind::Deployment => Some(Kind::ReplicaSet),
        Kind::ReplicaSet => Some(Kind::Pod),
        Kind::Service => Some(Kind::EndpointSlice),
        _ => None,
    }
}

/// Whether `object`'s controlling owner, as found in the store (`owner`: `None` when missing),
/// is gone. Objects without a controller, or with a controller of a kind tend does not store,
/// are never garbage.
pub fn is_orphaned(object: &Value, owner: Option<&Value>) -> bool {
    match (controller_of(object), owner) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some((_, _, uid)), Some(owner)) => owner.meta_str("uid") != Some(uid),
    }
}

impl GarbageCollector {
    pub fn new() -> Self {
        Self::default()
    }

    fn sweeps(&self) -> MutexGuard<'_, HashMap<ObjectKey, Vec<String>>> {
        self.sweeps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of `object`'s controlling owner, when it is a kind tend stores.
    fn owner_key(object: &Value) -> Option<ObjectKey> {
        let (kind, name, _) = controller_of(object)?;
        let kind = Kind::from_name(kind)?;
        let namespace = object.meta_str("namespace").unwrap_or("default");
        Some(ObjectKey::new(kind, namespace, name))
    }

    /// The delete op for `object` when its owner is gone.
    fn collect_if_orphaned(
        &self,
        object: &Value,
        ctx: &Context,
    ) -> Result<Option<Op>, ReconcileError> {
        let Some(owner_key) = Self::owner_key(object) else {
            return Ok(None);
        };
        let owner = ctx.store.get(&owner_key)?;
        if !is_orphaned(object, owner.as_ref()) {
            return Ok(None);
        }
        tracing::info!(
            object = ?ObjectKey::of(object),
            owner = %owner_key,
            "owner is gone; deleting"
        );
        Ok(deletion(object, ctx))
    }

    /// The dependents of the owner at `key` that pointed to it when it had uid `uid`, now
    /// gone (the owner at `key` is missing, or is a new object with another uid).
    fn orphaned_dependents(
        &self,
        key: &ObjectKey,
        uid: &str,
        owner: Option<&Value>,
        ctx: &Context,
    ) -> Result<Vec<Op>, ReconcileError> {
        let Some(kind) = dependent_kind(key.kind) else {
            return Ok(Vec::new());
        };
        let candidates = ctx.store.list_owned(kind, &key.namespace, uid)?;
        Ok(candidates
            .iter()
            .filter(|d| is_orphaned(d, owner))
            .filter_map(|d| deletion(d, ctx))
            .collect())
    }
}

/// Pods go gracefully (through their node); other objects at once.
fn deletion(object: &Value, ctx: &Context) -> Option<Op> {
    let key = ObjectKey::of(object)?;
    if key.kind == Kind::Pod {
        return pod_deletion(object, ctx.clock.now());
    }
    Some(Op::Delete {
        key,
        expect_rv: Some(object.resource_version()),
    })
}

impl Reconciler for GarbageCollector {
    fn wants(&self, kind: Kind, event_type: WatchEventType) -> bool {
        match kind {
            Kind::Deployment | Kind::Service => event_type == WatchEventType::Deleted,
            Kind::ReplicaSet => true,
            Kind::EndpointSlice | Kind::Pod => event_type != WatchEventType::Deleted,
            _ => false,
        }
    }

    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn keys_for(&self, event: &WatchEvent) -> Vec<ObjectKey> {
        let Some(key) = ObjectKey::of(&event.object) else {
            return Vec::new();
        };
        match (key.kind, event.event_type) {
            (Kind::Deployment | Kind::ReplicaSet | Kind::Service, WatchEventType::Deleted) => {
                if let Some(uid) = event.object.meta_str("uid") {
                    self.sweeps()
                        .entry(key.clone())
                        .or_default()
                        .push(uid.to_string());
                }
                vec![key]
            }
            // Dependents check their own owner when they appear or change.
            (Kind::ReplicaSet, _) => vec![key],
            (Kind::EndpointSlice, t) if t != WatchEventType::Deleted => vec![key],
            (Kind::Pod, t) if t != WatchEventType::Deleted => vec![key],
            _ => Vec::new(),
        }
    }

    fn initial_keys(&self, ctx: &Context) -> Result<Vec<ObjectKey>, ReconcileError> {
        // Every dependent checks its own owner: that covers owners deleted while stopped.
        let mut keys = Vec::new();
        for kind in [Kind::ReplicaSet, Kind::Pod, Kind::EndpointSlice] {
            let (objects, _) = ctx.store.list(kind, None)?;
            keys.extend(objects.iter().filter_map(ObjectKey::of));
        }
        Ok(keys)
    }

    fn reconcile(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, ReconcileError> {
        let object = ctx.store.get(key)?;
        let swept_uids = self.sweeps().remove(key).unwrap_or_default();
        let mut ops = Vec::new();
        if let Some(object) = &object {
            ops.extend(self.collect_if_orphaned(object, ctx)?);
        }
        for (i, uid) in swept_uids.iter().enumerate() {
            match self.orphaned_dependents(key, uid, object.as_ref(), ctx) {
                Ok(found) => ops.extend(found),
                Err(e) => {
                    // Put back what is not swept yet, so that the retry sweeps it.
                    self.sweeps()
                        .entry(key.clone())
                        .or_default()
                        .extend(swept_uids[i..].iter().cloned());
                    return Err(e);
                }
            }
        }
        for op in ops {
            // One at a time: a dependent deleted meanwhile must not hold up the others.
            match ctx.store.commit(vec![op]) {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    if !swept_uids.is_empty() {
                        self.sweeps()
                            .entry(key.clone())
                            .or_default()
                            .extend(swept_uids);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orphaned_only_when_the_controller_is_gone_or_replaced() {
        let rs = json!({"metadata": {"name": "web-1", "uid": "u1",
            "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]}});
        let same = json!({"metadata": {"name": "web", "uid": "d1"}});
        let replaced = json!({"metadata": {"name": "web", "uid": "d2"}});
        assert!(!is_orphaned(&rs, Some(&same)));
        assert!(is_orphaned(&rs, Some(&replaced)));
        assert!(is_orphaned(&rs, None));
        assert!(!is_orphaned(&json!({"metadata": {"name": "lone"}}), None));
    }
}
