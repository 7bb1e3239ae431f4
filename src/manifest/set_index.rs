//! The checks of [`validate_set`](super::validate::validate_set) kept up to date file by file.
//!
//! A one-file commit on top of 20,000 objects must not rescan them all to find that the
//! changed file clashes with none of the others (a duplicate object, a NodePort given twice,
//! Endpoints given for a Service with a selector). The source controller keeps this index of
//! every parsed file's objects, updates it for the changed files only, and asks it for the
//! errors: the cost is that of the changed files plus the clashes there are (none in a valid
//! source). The verdicts are those of the full check, to the message (tested against it on
//! random edits); only their order may differ, and [`SetIndex::errors`] sorts them.

use super::validate::{duplicate_message, node_port_clash_message, selected_endpoints_message};
use super::{Diagnostic, ParsedFile};
use crate::api::{Kind, ObjectKey};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Where an object is defined: its file and its place among the file's objects. The full
/// check sees the objects in this order (files by path, then in file order), and its "first"
/// definition is the smallest place.
type Place = (Arc<str>, usize);

/// One definition in a group: its place, the file and line its messages name, and its key.
#[derive(Debug, Clone)]
struct Entry {
    place: Place,
    file: Arc<str>,
    line: usize,
    key: ObjectKey,
}

impl Entry {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// A group's definitions in the order the full check sees them.
type Group = Vec<Entry>;

fn insert(group: &mut Group, entry: Entry) {
    let at = group.partition_point(|e| e.place <= entry.place);
    group.insert(at, entry);
}

/// The `(nodePort, protocol)` pairs a Service gives, one per port entry (a port listed twice
/// counts twice, as in the full check).
fn node_ports(object: &Value) -> Vec<(i64, String)> {
    let ports = object.pointer("/spec/ports").and_then(Value::as_array);
    ports
        .into_iter()
        .flatten()
        .filter_map(|port| {
            let node_port = port.get("nodePort").and_then(Value::as_i64)?;
            if node_port == 0 {
                return None;
            }
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            Some((node_port, protocol))
        })
        .collect()
}

fn has_selector(object: &Value) -> bool {
    object
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty())
}

/// Every parsed file's objects, grouped by what could clash, with the groups that clash.
#[derive(Debug, Default, Clone)]
pub struct SetIndex {
    by_key: HashMap<ObjectKey, Group>,
    node_ports: HashMap<(i64, String), Group>,
    /// Services with a selector, by their key.
    selected: HashMap<ObjectKey, Group>,
    /// Endpoints, by the key of their Service.
    endpoints: HashMap<ObjectKey, Group>,
    /// The groups above that clash now: the only ones [`SetIndex::errors`] looks at.
    duplicate: BTreeSet<ObjectKey>,
    port_clash: BTreeSet<(i64, String)>,
    endpoints_clash: BTreeSet<ObjectKey>,
}

impl SetIndex {
    /// Adds the objects of a file (`path`: the key the controller keeps it by).
    pub fn add_file(&mut self, path: &str, parsed: &ParsedFile) {
        self.each_object(path, parsed, |group, entry| insert(group, entry.clone()));
    }

    /// Removes the objects `add_file(path, parsed)` added.
    pub fn remove_file(&mut self, path: &str, parsed: &ParsedFile) {
        self.each_object(path, parsed, |group, entry| {
            group.retain(|e| e.place != entry.place)
        });
    }

    /// Applies `edit` to every group each object of the file belongs to, and judges those
    /// groups again.
    fn each_object(&mut self, path: &str, parsed: &ParsedFile, edit: impl Fn(&mut Group, &Entry)) {
        let path: Arc<str> = Arc::from(path);
        let mut file: Option<Arc<str>> = None;
        for (i, o) in parsed.objects.iter().enumerate() {
            let file = match &file {
                Some(f) if **f == *o.file => f.clone(),
                _ => file.insert(Arc::from(o.file.as_str())).clone(),
            };
            let entry = Entry {
                place: (path.clone(), i),
                file,
                line: o.line,
                key: o.key.clone(),
            };
            let key = &entry.key;
            let edit = |group: &mut Group| edit(group, &entry);
            edit_group(&mut self.by_key, key, &edit);
            judge(&self.by_key, key, &mut self.duplicate, |g| g.len() > 1);
            match key.kind {
                Kind::Endpoints => {
                    let service = ObjectKey::new(Kind::Service, &key.namespace, &key.name);
                    edit_group(&mut self.endpoints, &service, &edit);
                    self.judge_endpoints(&service);
                }
                Kind::Service => {
                    for port in node_ports(&o.object) {
                        edit_group(&mut self.node_ports, &port, &edit);
                        judge(&self.node_ports, &port, &mut self.port_clash, |g| {
                            g.iter().any(|e| e.key != g[0].key)
                        });
                    }
                    if has_selector(&o.object) {
                        edit_group(&mut self.selected, key, &edit);
                        self.judge_endpoints(key);
                    }
                }
                _ => {}
            }
        }
    }

    fn judge_endpoints(&mut self, service: &ObjectKey) {
        let clash = self.selected.contains_key(service) && self.endpoints.contains_key(service);
        if clash {
            self.endpoints_clash.insert(service.clone());
        } else {
            self.endpoints_clash.remove(service);
        }
    }

    /// The errors `validate_set` gives for all the indexed objects, sorted by file, line and
    /// message.
    pub fn errors(&self) -> Vec<Diagnostic> {
        let mut errors = Vec::new();
        for service in &self.endpoints_clash {
            let (Some(services), Some(endpoints)) =
                (self.selected.get(service), self.endpoints.get(service))
            else {
                continue;
            };
            // The full check names the last Service with a selector of that name.
            let Some(svc) = services.last() else {
                continue;
            };
            for o in endpoints {
                errors.push(Diagnostic {
                    file: o.file.to_string(),
                    line: o.line,
                    column: 0,
                    path: String::new(),
                    message: selected_endpoints_message(&o.key, &svc.key.name, &svc.at()),
                });
            }
        }
        for key in &self.duplicate {
            let Some((first, rest)) = self.by_key.get(key).and_then(|g| g.split_first()) else {
                continue;
            };
            for o in rest {
                errors.push(Diagnostic {
                    file: o.file.to_string(),
                    line: o.line,
                    column: 0,
                    path: String::new(),
                    message: duplicate_message(key, &first.at(), &o.at()),
                });
            }
        }
        for port in &self.port_clash {
            let Some((first, rest)) = self.node_ports.get(port).and_then(|g| g.split_first())
            else {
                continue;
            };
            let (node_port, protocol) = port;
            for o in rest.iter().filter(|o| o.key != first.key) {
                errors.push(Diagnostic {
                    file: o.file.to_string(),
                    line: o.line,
                    column: 0,
                    path: "spec.ports".to_string(),
                    message: node_port_clash_message(
                        node_port,
                        protocol,
                        (&first.key.name, &first.at()),
                        (&o.key.name, &o.at()),
                    ),
                });
            }
        }
        sort(&mut errors);
        errors
    }
}

/// Sorts diagnostics by file, line, path and message: the order [`SetIndex::errors`] gives.
pub fn sort(errors: &mut [Diagnostic]) {
    errors.sort_by(|a, b| {
        (&a.file, a.line, &a.path, &a.message).cmp(&(&b.file, b.line, &b.path, &b.message))
    });
}

/// Applies `edit` to the group of `key`; an emptied group is dropped, so that a removed
/// object leaves nothing behind.
fn edit_group<K: std::hash::Hash + Eq + Clone>(
    groups: &mut HashMap<K, Group>,
    key: &K,
    edit: &impl Fn(&mut Group),
) {
    if let Some(group) = groups.get_mut(key) {
        edit(group);
        if group.is_empty() {
            groups.remove(key);
        }
        return;
    }
    let mut group = Group::new();
    edit(&mut group);
    if !group.is_empty() {
        groups.insert(key.clone(), group);
    }
}

fn judge<K: std::hash::Hash + Eq + Ord + Clone>(
    groups: &HashMap<K, Group>,
    key: &K,
    clashing: &mut BTreeSet<K>,
    clashes: impl Fn(&Group) -> bool,
) {
    if groups.get(key).is_some_and(clashes) {
        clashing.insert(key.clone());
    } else {
        clashing.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DesiredObject;
    use crate::manifest::validate::validate_set;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn random_object(rng: &mut StdRng, file: &str, index: usize) -> DesiredObject {
        let kind = [
            Kind::Deployment,
            Kind::Service,
            Kind::Service,
            Kind::Endpoints,
        ][rng.random_range(0..4)];
        let namespace = ["default", "other"][rng.random_range(0..2)];
        let name = ["a", "b", "c"][rng.random_range(0..3)];
        let mut object = json!({"metadata": {"name": name, "namespace": namespace}, "spec": {}});
        if kind == Kind::Service {
            let ports: Vec<Value> = (0..rng.random_range(0..3))
                .map(|_| {
                    let mut port = json!({"port": 80});
                    let node_port = [0, 30000, 30001][rng.random_range(0..3)];
                    if node_port != 0 || rng.random_bool(0.5) {
                        port["nodePort"] = json!(node_port);
                    }
                    match rng.random_range(0..3) {
                        0 => port["protocol"] = json!("UDP"),
                        1 => port["protocol"] = json!("TCP"),
                        _ => {}
                    }
                    port
                })
                .collect();
            object["spec"]["ports"] = json!(ports);
            match rng.random_range(0..3) {
                0 => object["spec"]["selector"] = json!({"app": name}),
                1 => object["spec"]["selector"] = json!({}),
                _ => {}
            }
        }
        DesiredObject {
            key: ObjectKey::new(kind, namespace, name),
            file: file.to_string(),
            line: 1 + 10 * index,
            object,
        }
    }

    fn full_check(files: &BTreeMap<String, ParsedFile>) -> Vec<Diagnostic> {
        let mut errors = validate_set(files.values().flat_map(|f| f.objects.iter()));
        sort(&mut errors);
        errors
    }

    /// Random files replaced and removed one at a time: after each edit the index gives
    /// exactly the errors of the full check over all files.
    #[test]
    fn incremental_verdicts_match_the_full_check_on_random_edits() {
        let mut clashes = 0;
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut files: BTreeMap<String, ParsedFile> = BTreeMap::new();
            let mut index = SetIndex::default();
            for _ in 0..40 {
                let path = format!("f{}.yaml", rng.random_range(0..6));
                if let Some(old) = files.remove(&path) {
                    index.remove_file(&path, &old);
                }
                if rng.random_bool(0.8) {
                    let parsed = ParsedFile {
                        objects: (0..rng.random_range(0..4))
                            .map(|i| random_object(&mut rng, &path, i))
                            .collect(),
                        ..Default::default()
                    };
                    index.add_file(&path, &parsed);
                    files.insert(path, parsed);
                }
                let full = full_check(&files);
                clashes += usize::from(!full.is_empty());
                assert_eq!(index.errors(), full, "seed {seed}");
            }
            // Everything removed: nothing is left behind.
            for (path, parsed) in std::mem::take(&mut files) {
                index.remove_file(&path, &parsed);
            }
            assert!(index.by_key.is_empty() && index.node_ports.is_empty());
            assert!(index.selected.is_empty() && index.endpoints.is_empty());
            assert!(index.duplicate.is_empty() && index.port_clash.is_empty());
            assert!(index.endpoints_clash.is_empty());
        }
        assert!(
            clashes > 1000,
            "the random sources clash often enough: {clashes}"
        );
    }

    #[test]
    fn a_changed_file_clashing_with_an_unchanged_one_is_named_with_both_places() {
        let service = |file: &str, name: &str, node_port: i64| DesiredObject {
            key: ObjectKey::new(Kind::Service, "default", name),
            file: file.to_string(),
            line: 3,
            object: json!({"spec": {"ports": [{"port": 80, "nodePort": node_port}]}}),
        };
        let one = |o: DesiredObject| ParsedFile {
            objects: vec![o],
            ..Default::default()
        };
        let mut index = SetIndex::default();
        for i in 0..1000 {
            let file = format!("s{i}.yaml");
            index.add_file(&file, &one(service(&file, &format!("s{i}"), 30000 + i)));
        }
        assert!(index.errors().is_empty());
        let old = one(service("s7.yaml", "s7", 30007));
        let new = one(service("s7.yaml", "s7", 30500));
        index.remove_file("s7.yaml", &old);
        index.add_file("s7.yaml", &new);
        let errors: Vec<String> = index.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            vec![
                "s7.yaml:3: spec.ports: nodePort 30500/TCP is given by service/s500 at \
                 s500.yaml:3 and by service/s7 at s7.yaml:3"
            ]
        );
        index.remove_file("s7.yaml", &new);
        index.add_file("s7.yaml", &old);
        assert!(index.errors().is_empty());
    }
}
