//! The scheduler's cache, as kube-scheduler's informers and cache: a [`Snapshot`] listed from
//! the store once, then kept current by reading the store's watch before each decision; binds
//! are counted as soon as they are made (assumed), so pods scheduled back to back spread.

use super::snapshot::{NodeSpec, PodRequirements, Snapshot, occupies_node};
use crate::api::{Kind, ObjectKey};
use crate::store::{Store, StoreError, Watch, WatchEvent, WatchEventType};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Default)]
pub struct SchedulerCache {
    snapshot: Snapshot,
    /// Each pod counted on a node and what was counted, so that a change or a deletion takes
    /// back exactly that.
    counted: HashMap<ObjectKey, (String, PodRequirements)>,
    /// `None` until listed, and after the watch fell behind the store's kept window.
    watch: Option<Watch>,
}

impl SchedulerCache {
    pub fn new() -> SchedulerCache {
        SchedulerCache::default()
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Forgets everything: the next `sync` lists again (after a relist of the controller).
    pub fn invalidate(&mut self) {
        self.watch = None;
    }

    /// Catches up with the store: applies the changes the watch holds, or lists again when
    /// there is no watch yet or it fell behind.
    pub fn sync(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        if let Some(mut watch) = self.watch.take() {
            loop {
                match watch.try_next_of(|kind, _| matches!(kind, Kind::Pod | Kind::Node)) {
                    Ok(Some(event)) => self.apply(&event),
                    Ok(None) => {
                        self.watch = Some(watch);
                        return Ok(());
                    }
                    Err(StoreError::Gone { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.relist(store)
    }

    fn relist(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        let (nodes, nodes_rv) = store.list(Kind::Node, None)?;
        let (pods, _) = store.list(Kind::Pod, None)?;
        self.snapshot = Snapshot::new();
        self.counted.clear();
        for node in nodes.iter().filter_map(NodeSpec::of) {
            self.snapshot.upsert_node(node);
        }
        for pod in &pods {
            self.observe_pod(pod, false);
        }
        // From the nodes' version: pod changes listed already are applied again, harmlessly
        // (each pod replaces its own earlier count).
        self.watch = Some(store.watch(nodes_rv)?);
        Ok(())
    }

    /// Applies one change of the store.
    pub fn apply(&mut self, event: &WatchEvent) {
        let deleted = event.event_type == WatchEventType::Deleted;
        match event.object.get("kind").and_then(Value::as_str) {
            Some("Pod") => self.observe_pod(&event.object, deleted),
            Some("Node") => {
                let Some(spec) = NodeSpec::of(&event.object) else {
                    return;
                };
                if deleted {
                    self.snapshot.remove_node(&spec.name);
                    return;
                }
                let name = spec.name.clone();
                let new = self.snapshot.node(&name).is_none();
                self.snapshot.upsert_node(spec);
                if new {
                    // Pods seen bound to it before the node itself (or before it came back).
                    for (node, pod) in self.counted.values() {
                        if *node == name {
                            self.snapshot.add_pod(node, pod);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn observe_pod(&mut self, pod: &Value, deleted: bool) {
        let Some(key) = ObjectKey::of(pod) else {
            return;
        };
        self.forget(&key);
        if !deleted
            && occupies_node(pod)
            && let Some(node) = crate::api::pod::node_name(pod)
        {
            self.count(key, node, PodRequirements::of(pod));
        }
    }

    /// Counts a pod just bound to `node`, before its change comes back through the watch.
    pub fn assume(&mut self, key: &ObjectKey, node: &str, pod: PodRequirements) {
        self.forget(key);
        self.count(key.clone(), node, pod);
    }

    fn count(&mut self, key: ObjectKey, node: &str, pod: PodRequirements) {
        self.snapshot.add_pod(node, &pod);
        self.counted.insert(key, (node.to_string(), pod));
    }

    fn forget(&mut self, key: &ObjectKey) {
        if let Some((node, pod)) = self.counted.remove(key) {
            self.snapshot.remove_pod(&node, &pod);
        }
    }
}
