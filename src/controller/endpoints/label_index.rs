//! Names filed by label pair, so that the endpoints controller finds a Service's pods and a
//! pod's Services without matching every pod against every selector of the namespace.
//!
//! At 10,000 Services and 30,000 pods in one namespace, each pod event matched all 10,000
//! selectors and each Service sync all 30,000 pods: the controllers spent most of their time
//! there while creating the pods of a large apply. A Service's selector is a set of
//! `key=value` pairs, so one of its pairs narrows the candidates to the few objects carrying
//! it; the full match is still done on each candidate.

use crate::api::selector::{Requirement, Selector};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};

/// Names by the `(key, value)` pairs they are filed under.
#[derive(Debug, Default)]
pub struct LabelIndex {
    by_pair: HashMap<(String, String), BTreeSet<String>>,
    /// Selectors with no `key=value` requirement: candidates for every object.
    unfiled: BTreeSet<String>,
}

/// The pair a selector is filed under and looked up by: its first equality.
pub fn first_pair(selector: &Selector) -> Option<(&str, &str)> {
    selector.0.iter().find_map(|r| match r {
        Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
        _ => None,
    })
}

fn pairs(labels: Option<&Map<String, Value>>) -> impl Iterator<Item = (&str, &str)> {
    labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

impl LabelIndex {
    fn file(&mut self, pair: (&str, &str), name: &str) {
        self.by_pair
            .entry((pair.0.to_string(), pair.1.to_string()))
            .or_default()
            .insert(name.to_string());
    }

    fn unfile(&mut self, pair: (&str, &str), name: &str) {
        let key = (pair.0.to_string(), pair.1.to_string());
        if let Some(names) = self.by_pair.get_mut(&key) {
            names.remove(name);
            if names.is_empty() {
                self.by_pair.remove(&key);
            }
        }
    }

    /// Files an object `name` under each of its labels.
    pub fn add_labels(&mut self, name: &str, labels: Option<&Map<String, Value>>) {
        for pair in pairs(labels) {
            self.file(pair, name);
        }
    }

    /// Undoes `add_labels(name, labels)`.
    pub fn remove_labels(&mut self, name: &str, labels: Option<&Map<String, Value>>) {
        for pair in pairs(labels) {
            self.unfile(pair, name);
        }
    }

    /// Files a selector `name` under its first equality (or with the unfiled ones).
    pub fn add_selector(&mut self, name: &str, selector: &Selector) {
        match first_pair(selector) {
            Some(pair) => self.file(pair, name),
            None => {
                self.unfiled.insert(name.to_string());
            }
        }
    }

    /// Undoes `add_selector(name, selector)`.
    pub fn remove_selector(&mut self, name: &str, selector: &Selector) {
        match first_pair(selector) {
            Some(pair) => self.unfile(pair, name),
            None => {
                self.unfiled.remove(name);
            }
        }
    }

    /// The objects filed (by `add_labels`) under `selector`'s first equality, or `None` when
    /// it has none and every object is a candidate.
    pub fn labelled<'a>(&'a self, selector: &Selector) -> Option<Vec<&'a str>> {
        let (k, v) = first_pair(selector)?;
        let names = self.by_pair.get(&(k.to_string(), v.to_string()));
        Some(names.into_iter().flatten().map(String::as_str).collect())
    }

    /// The selectors (filed by `add_selector`) that objects with `labels` may match, in name
    /// order.
    pub fn selecting<'a>(&'a self, labels: Option<&Map<String, Value>>) -> BTreeSet<&'a str> {
        let mut names: BTreeSet<&str> = self.unfiled.iter().map(String::as_str).collect();
        for (k, v) in pairs(labels) {
            if let Some(filed) = self.by_pair.get(&(k.to_string(), v.to_string())) {
                names.extend(filed.iter().map(String::as_str));
            }
        }
        names
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty() && self.unfiled.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Cache;
    use crate::api::ObjectMeta;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{Map, Value, json};

    fn labels(rng: &mut StdRng) -> Map<String, Value> {
        let mut labels = Map::new();
        for key in ["app", "tier", "team"] {
            if rng.random_bool(0.6) {
                let value = ["a", "b", "c"][rng.random_range(0..3)];
                labels.insert(key.to_string(), json!(value));
            }
        }
        labels
    }

    /// Random Services and pods added, changed and deleted: the indexed lookups give what
    /// matching every selector against every pod gives, in the same order.
    #[test]
    fn indexed_lookups_match_the_full_scan() {
        let mut matched = 0;
        for seed in 0..100 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut cache = Cache::default();
            for _ in 0..200 {
                let namespace = ["default", "other"][rng.random_range(0..2)];
                let name = format!("o{}", rng.random_range(0..8));
                let deleted = rng.random_bool(0.2);
                let meta = json!({"name": name, "namespace": namespace});
                if rng.random_bool(0.3) {
                    let service = json!({"metadata": meta, "spec": {"selector": labels(&mut rng)}});
                    cache.set_service(&service, deleted);
                } else {
                    let mut pod = json!({"metadata": meta});
                    pod["metadata"]["labels"] = Value::Object(labels(&mut rng));
                    cache.set_pod(&pod, deleted);
                }
                for ns in ["default", "other"] {
                    let pods: Vec<&Value> = cache
                        .pods
                        .get(ns)
                        .into_iter()
                        .flat_map(|p| p.values())
                        .map(|p| &**p)
                        .collect();
                    let selectors = cache.selectors.get(ns).cloned().unwrap_or_default();
                    for (service, selector) in &selectors {
                        let want: Vec<Value> = pods
                            .iter()
                            .filter(|p| selector.matches(p.labels()))
                            .map(|p| Value::clone(p))
                            .collect();
                        matched += want.len();
                        assert_eq!(cache.pods_matching(ns, selector), want, "{service}");
                    }
                    for pod in &pods {
                        let want: Vec<String> = selectors
                            .iter()
                            .filter(|(_, s)| s.matches(pod.labels()))
                            .map(|(n, _)| n.clone())
                            .collect();
                        assert_eq!(cache.services_matching(ns, pod), want);
                    }
                }
            }
            // Everything deleted: the indexes hold nothing.
            for ns in ["default", "other"] {
                for i in 0..8 {
                    let meta = json!({"metadata": {"name": format!("o{i}"), "namespace": ns}});
                    cache.set_service(&meta, true);
                    cache.set_pod(&meta, true);
                }
            }
            assert!(cache.pod_index.values().all(|i| i.is_empty()));
            assert!(cache.selector_index.values().all(|i| i.is_empty()));
        }
        assert!(matched > 1000, "the random selectors match pods: {matched}");
    }
}
