//! An index of objects by their controlling owner, in front of a store: what Kubernetes'
//! informers give its controllers. Without it, a ReplicaSet reconcile reads every pod of the
//! namespace and a Deployment reconcile every ReplicaSet, so converging N Deployments costs
//! N² reads. The index is built from one list and kept current from the store's watch;
//! before answering, it applies every change already committed, so a controller always sees
//! its own writes.

use super::{Committed, Op, Store, StoreError, Watch};
use crate::api::{Kind, ObjectKey};
use crate::store::WatchEventType;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// The kinds indexed: the ones controllers look up by owner.
const INDEXED: [Kind; 3] = [Kind::ReplicaSet, Kind::Pod, Kind::EndpointSlice];

/// (kind, namespace, owner uid or "" for orphans) -> keys.
type Index = HashMap<(Kind, String, String), BTreeSet<ObjectKey>>;

pub struct OwnerIndex {
    inner: Arc<dyn Store>,
    state: Mutex<IndexState>,
}

struct IndexState {
    watch: Watch,
    by_owner: Index,
    owner_of: HashMap<ObjectKey, String>,
}

fn owner_uid(object: &Value) -> String {
    crate::api::pod::controller_of(object).map_or(String::new(), |(_, _, uid)| uid.to_string())
}

impl IndexState {
    fn insert(&mut self, key: ObjectKey, owner: String) {
        self.remove(&key);
        self.by_owner
            .entry((key.kind, key.namespace.clone(), owner.clone()))
            .or_default()
            .insert(key.clone());
        self.owner_of.insert(key, owner);
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(owner) = self.owner_of.remove(key) {
            let slot = (key.kind, key.namespace.clone(), owner);
            if let Some(keys) = self.by_owner.get_mut(&slot) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_owner.remove(&slot);
                }
            }
        }
    }
}

impl OwnerIndex {
    pub fn new(inner: Arc<dyn Store>) -> Result<OwnerIndex, StoreError> {
        let state = Self::build(inner.as_ref())?;
        Ok(OwnerIndex {
            inner,
            state: Mutex::new(state),
        })
    }

    fn build(inner: &dyn Store) -> Result<IndexState, StoreError> {
        let rv = inner.current_rv();
        let mut state = IndexState {
            watch: inner.watch(rv)?,
            by_owner: HashMap::new(),
            owner_of: HashMap::new(),
        };
        for kind in INDEXED {
            // Objects written after `rv` are in the list and in the watch: inserting twice
            // is harmless.
            for o in inner.list(kind, None)?.0 {
                if let Some(key) = ObjectKey::of(&o) {
                    state.insert(key, owner_uid(&o));
                }
            }
        }
        Ok(state)
    }

    /// Applies every committed change not yet seen; rebuilds when the watch fell behind.
    fn catch_up(&self) -> Result<std::sync::MutexGuard<'_, IndexState>, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match state.watch.try_next_of(|kind, _| INDEXED.contains(&kind)) {
                Ok(Some(event)) => {
                    let Some(key) = ObjectKey::of(&event.object) else {
                        continue;
                    };
                    if !INDEXED.contains(&key.kind) {
                        continue;
                    }
                    match event.event_type {
                        WatchEventType::Deleted => state.remove(&key),
                        _ => {
                            let owner = owner_uid(&event.object);
                            state.insert(key, owner);
                        }
                    }
                }
                Ok(None) => return Ok(state),
                Err(StoreError::Gone { .. }) => *state = Self::build(self.inner.as_ref())?,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Store for OwnerIndex {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        self.inner.get(key)
    }
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        self.inner.list(kind, namespace)
    }
    fn visit(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        each: &mut dyn FnMut(Value),
    ) -> Result<u64, StoreError> {
        self.inner.visit(kind, namespace, each)
    }
    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        self.inner.commit(ops)
    }
    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError> {
        self.inner.watch(from_rv)
    }
    fn current_rv(&self) -> u64 {
        self.inner.current_rv()
    }

    fn list_owned(
        &self,
        kind: Kind,
        namespace: &str,
        owner: &str,
    ) -> Result<Vec<Value>, StoreError> {
        if !INDEXED.contains(&kind) {
            return self.inner.list_owned(kind, namespace, owner);
        }
        let keys: Vec<ObjectKey> = {
            let state = self.catch_up()?;
            state
                .by_owner
                .get(&(kind, namespace.to_string(), owner.to_string()))
                .map(|keys| keys.iter().cloned().collect())
                .unwrap_or_default()
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            // Re-check: the object may have changed owner or gone since the index saw it.
            if let Some(o) = self.inner.get(&key)?
                && owner_uid(&o) == owner
            {
                out.push(o);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use serde_json::json;

    fn pod(name: &str, owner: Option<&str>) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}});
        if let Some(uid) = owner {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]);
        }
        p
    }

    fn names(v: Vec<Value>) -> Vec<String> {
        let mut n: Vec<String> = v
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn answers_like_the_default_and_follows_every_write() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        inner
            .commit(vec![
                Op::Create(pod("a", Some("u1"))),
                Op::Create(pod("o", None)),
            ])
            .unwrap();
        let index = OwnerIndex::new(inner.clone()).unwrap();
        let store: &dyn Store = &index;
        assert_eq!(
            names(store.list_owned(Kind::Pod, "default", "u1").unwrap()),
            ["a"]
        );
        assert_eq!(
            names(store.list_owned(Kind::Pod, "default", "").unwrap()),
            ["o"]
        );
        // Writes through the index and behind its back are both seen at once.
        store
            .commit(vec![Op::Create(pod("b", Some("u1")))])
            .unwrap();
        inner
            .commit(vec![Op::Put {
                object: pod("o", Some("u1")),
                expect_rv: None,
            }])
            .unwrap();
        assert_eq!(
            names(store.list_owned(Kind::Pod, "default", "u1").unwrap()),
            ["a", "b", "o"]
        );
        assert!(
            store
                .list_owned(Kind::Pod, "default", "")
                .unwrap()
                .is_empty()
        );
        inner
            .commit(vec![Op::Delete {
                key: ObjectKey::new(Kind::Pod, "default", "a"),
                expect_rv: None,
            }])
            .unwrap();
        assert_eq!(
            names(store.list_owned(Kind::Pod, "default", "u1").unwrap()),
            ["b", "o"]
        );
        assert_eq!(
            names(store.list_owned(Kind::Pod, "default", "u1").unwrap()),
            names(inner.list_owned(Kind::Pod, "default", "u1").unwrap()),
            "same answer as the default method"
        );
    }

    #[test]
    fn rebuilds_after_falling_out_of_the_watch_window() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::with_watch_limits(
            crate::store::watch::WatchLimits::events(2),
        ));
        let index = OwnerIndex::new(inner.clone()).unwrap();
        for i in 0..10 {
            inner
                .commit(vec![Op::Create(pod(&format!("p{i}"), Some("u1")))])
                .unwrap();
        }
        assert_eq!(
            index.list_owned(Kind::Pod, "default", "u1").unwrap().len(),
            10
        );
    }
}
