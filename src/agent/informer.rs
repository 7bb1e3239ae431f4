//! The agent's copies of cluster-wide objects (every Service, every Endpoints), kept by a
//! list-then-watch as client-go's informers keep them: a change reaches the node's Service
//! proxy as soon as the server sends it, instead of at the next periodic list, and an idle
//! cluster costs no traffic at all (a periodic list of 10,000 Endpoints is megabytes).
//!
//! [`Informer`] (pure, apart from its notifier) applies [`WatchEvent`]s to a map keyed by
//! namespace and name, parsed once into `T`; [`follow_into`] feeds it from the API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::client::{AgentClient, FromObject, WatchEvent, namespace_and_name};
use super::views::Keyed;

/// A namespace and name.
pub type Key = (String, String);

/// What changed since the last [`Informer::take_changed`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    /// Everything may have (a list replaced the objects).
    pub all: bool,
    /// These objects were added, changed or deleted.
    pub keys: BTreeSet<Key>,
}

/// The objects of one kind, by namespace and name; `None` until the first list arrived.
pub struct Informer<T> {
    objects: RwLock<Option<BTreeMap<Key, T>>>,
    /// Bumped on every change, so that readers can wait for one.
    generation: watch::Sender<u64>,
    /// The keys changed since the last [`Informer::take_changed`], for the one reader that
    /// works incrementally (the Service proxy): it then reads only those objects.
    changed: Mutex<Changed>,
}

impl<T> Default for Informer<T> {
    fn default() -> Self {
        Informer {
            objects: RwLock::new(None),
            generation: watch::channel(0).0,
            changed: Mutex::new(Changed::default()),
        }
    }
}

impl<T> Informer<T> {
    fn mark(&self, key: Option<Key>) {
        let mut changed = self
            .changed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match key {
            None => {
                changed.all = true;
                changed.keys.clear();
            }
            Some(key) if !changed.all => {
                changed.keys.insert(key);
            }
            Some(_) => {}
        }
    }

    /// What changed since the last call (for one reader: taking clears it).
    pub fn take_changed(&self) -> Changed {
        std::mem::take(
            &mut *self
                .changed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Whether the first list arrived.
    pub fn listed(&self) -> bool {
        self.objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }

    /// The change counter: bumped after every change is applied.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// The keys of every object held.
    pub fn keys(&self) -> Vec<Key> {
        self.objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects of one namespace, in name order; `None` until the first list.
    pub fn namespace(&self, namespace: &str) -> Option<Vec<T>>
    where
        T: Clone,
    {
        self.namespace_map(namespace, T::clone)
    }

    /// The objects of one namespace, in name order, each through `f`; `None` until the
    /// first list.
    pub fn namespace_map<R>(&self, namespace: &str, f: impl FnMut(&T) -> R) -> Option<Vec<R>> {
        let slot = self
            .objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = (namespace.to_string(), String::new());
        Some(
            slot.as_ref()?
                .range(start..)
                .take_while(|((ns, _), _)| ns == namespace)
                .map(|(_, t)| t)
                .map(f)
                .collect(),
        )
    }

    /// Reads one object without copying the others.
    pub fn with<R>(&self, key: &Key, f: impl FnOnce(Option<&T>) -> R) -> R {
        let slot = self
            .objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(slot.as_ref().and_then(|m| m.get(key)))
    }
}

/// One object as an informer receives it: its namespace and name, and the object parsed as
/// `T` (or why it does not parse). Made as the list or watch is read, one object at a time
/// ([`FromObject`]).
pub struct Item<T> {
    key: Key,
    parsed: Result<T, String>,
}

impl<T: DeserializeOwned + Send + 'static> FromObject for Item<T> {
    fn from_object(object: Value) -> Self {
        let key = namespace_and_name(&object);
        Item {
            key,
            parsed: serde_json::from_value(object).map_err(|e| e.to_string()),
        }
    }
}

impl<T: DeserializeOwned + Clone + Send + 'static> Informer<T> {
    /// Applies one event of JSON objects (see [`Informer::apply_items`]).
    pub fn apply(&self, event: WatchEvent) {
        self.apply_items(event.map(Item::from_object));
    }

    /// Applies one event. Objects that do not parse as `T` are left out with a warning (on a
    /// change, the old copy goes too: it no longer says what the server holds).
    pub fn apply_items(&self, event: WatchEvent<Item<T>>) {
        let mut slot = self
            .objects
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let parsed = |item: Item<T>| -> (Key, Option<T>) {
            match item.parsed {
                Ok(t) => (item.key, Some(t)),
                Err(e) => {
                    tracing::warn!(
                        "{}/{} does not parse, left out: {e}",
                        item.key.0,
                        item.key.1
                    );
                    (item.key, None)
                }
            }
        };
        let key = match event {
            WatchEvent::Listed(items) => {
                *slot = Some(
                    items
                        .into_iter()
                        .filter_map(|o| match parsed(o) {
                            (key, Some(t)) => Some((key, t)),
                            (_, None) => None,
                        })
                        .collect(),
                );
                None
            }
            WatchEvent::Applied(item) => {
                let map = slot.get_or_insert_with(BTreeMap::new);
                match parsed(item) {
                    (key, Some(t)) => {
                        map.insert(key.clone(), t);
                        Some(key)
                    }
                    (key, None) => {
                        map.remove(&key);
                        Some(key)
                    }
                }
            }
            WatchEvent::Deleted(item) => {
                if let Some(map) = slot.as_mut() {
                    map.remove(&item.key);
                }
                Some(item.key)
            }
        };
        drop(slot);
        self.mark(key);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Replaces every object (tests, and callers that list themselves).
    pub fn replace(&self, objects: Vec<T>)
    where
        T: Keyed,
    {
        let key = |o: &T| o.key();
        let mut slot = self
            .objects
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(objects.into_iter().map(|o| (key(&o), o)).collect());
        drop(slot);
        self.mark(None);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Every object, in namespace and name order; `None` until the first list (tests: the
    /// agent reads one namespace or one object at a time).
    #[cfg(test)]
    pub fn snapshot(&self) -> Option<Vec<T>> {
        self.objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|m| m.values().cloned().collect())
    }

    /// A receiver that sees every change (its value is a change counter).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// Follows the list `path` (e.g. `/api/v1/services`) into `informer` until `shutdown`.
pub async fn follow_into<T: DeserializeOwned + Clone + Send + Sync + 'static>(
    client: AgentClient,
    path: &'static str,
    informer: Arc<Informer<T>>,
    shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<WatchEvent<Item<T>>>(256);
    let follower = tokio::spawn(async move { client.follow(path, None, tx, shutdown).await });
    while let Some(event) = rx.recv().await {
        informer.apply_items(event);
    }
    let _ = follower.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::views::ServiceView as Service;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip}})
    }

    fn ips(informer: &Informer<Service>) -> Vec<String> {
        informer
            .snapshot()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| s.spec?.cluster_ip)
            .collect()
    }

    #[test]
    fn lists_watches_and_deletes_by_namespace_and_name() {
        let informer = Informer::<Service>::default();
        let changes = informer.changes();
        assert!(informer.snapshot().is_none(), "nothing read yet");
        informer.apply(WatchEvent::Listed(vec![
            svc("default", "b", "10.96.0.2"),
            svc("default", "a", "10.96.0.1"),
        ]));
        assert_eq!(ips(&informer), ["10.96.0.1", "10.96.0.2"]);
        informer.apply(WatchEvent::Applied(svc("default", "a", "10.96.0.9")));
        informer.apply(WatchEvent::Applied(svc("other", "a", "10.96.0.3")));
        assert_eq!(ips(&informer), ["10.96.0.9", "10.96.0.2", "10.96.0.3"]);
        informer.apply(WatchEvent::Deleted(svc("default", "b", "")));
        assert_eq!(ips(&informer), ["10.96.0.9", "10.96.0.3"]);
        // A relist drops what it does not hold.
        informer.apply(WatchEvent::Listed(vec![svc("other", "a", "10.96.0.3")]));
        assert_eq!(ips(&informer), ["10.96.0.3"]);
        assert_eq!(*changes.borrow(), 5);
    }

    #[test]
    fn changed_keys_are_reported_once_and_a_list_means_all() {
        let informer = Informer::<Service>::default();
        assert!(!informer.listed());
        informer.apply(WatchEvent::Listed(vec![svc("default", "a", "10.96.0.1")]));
        assert!(informer.listed());
        informer.apply(WatchEvent::Applied(svc("default", "b", "10.96.0.2")));
        let first = informer.take_changed();
        assert!(first.all && first.keys.is_empty(), "{first:?}");
        assert_eq!(informer.take_changed(), Changed::default(), "taking clears");
        informer.apply(WatchEvent::Applied(svc("default", "a", "10.96.0.9")));
        informer.apply(WatchEvent::Deleted(svc("default", "b", "")));
        informer.apply(WatchEvent::Applied(svc("default", "a", "10.96.0.8")));
        let changed = informer.take_changed();
        assert!(!changed.all);
        let keys: Vec<&str> = changed.keys.iter().map(|k| k.1.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        let ip = informer.with(&("default".into(), "a".into()), |s| {
            s.and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
        });
        assert_eq!(ip.as_deref(), Some("10.96.0.8"));
        assert_eq!(informer.keys().len(), 1);
    }

    #[test]
    fn an_object_that_no_longer_parses_is_dropped() {
        let informer = Informer::<Service>::default();
        informer.apply(WatchEvent::Listed(vec![svc("default", "a", "10.96.0.1")]));
        informer.apply(WatchEvent::Applied(
            json!({"metadata": {"namespace": "default", "name": "a"}, "spec": {"ports": "no"}}),
        ));
        assert_eq!(informer.snapshot().map(|s| s.len()), Some(0));
    }
}
