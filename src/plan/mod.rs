//! Desired vs applied -> a `Plan`: create, update (with a JSON patch) or prune, per object.
//! Unchanged objects get no action. Only what tend manages is compared: `apiVersion`, `kind`,
//! `metadata.{name,namespace,labels,annotations}` and `spec` (`subsets` for Endpoints); fields
//! the control plane owns (status, uid, resourceVersion, the revision annotation) never cause
//! an update.

pub mod diff;

use crate::api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObjectKey, SOURCE_FILE_ANNOTATION};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Annotations the control plane writes on managed objects, ignored when comparing.
pub const VOLATILE_ANNOTATIONS: [&str; 2] = [
    crate::api::SOURCE_REVISION_ANNOTATION,
    CHANGE_CAUSE_ANNOTATION,
];
/// Annotation prefixes owned by controllers (the Deployment controller's revision
/// bookkeeping): ignored when comparing, and kept when the source updates the object.
pub const CONTROLLER_ANNOTATION_PREFIXES: [&str; 1] = ["deployment.kubernetes.io/"];

/// Whether the control plane, not the source, owns this annotation.
pub fn is_volatile_annotation(key: &str) -> bool {
    VOLATILE_ANNOTATIONS.contains(&key) || is_controller_annotation(key)
}

/// Whether a controller owns this annotation (kept across source updates).
pub fn is_controller_annotation(key: &str) -> bool {
    CONTROLLER_ANNOTATION_PREFIXES
        .iter()
        .any(|p| key.starts_with(p))
}

/// The change cause of the revision that last changed the object (`<short id> <subject>`).
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create {
        key: ObjectKey,
        object: Value,
    },
    Update {
        key: ObjectKey,
        before: Value,
        after: Value,
        patch: json_patch::Patch,
    },
    Prune {
        key: ObjectKey,
        before: Value,
    },
}

impl Action {
    pub fn key(&self) -> &ObjectKey {
        match self {
            Action::Create { key, .. } | Action::Update { key, .. } | Action::Prune { key, .. } => {
                key
            }
        }
    }
}

/// What a revision changes, in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
    /// (created, updated, pruned)
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for a in &self.actions {
            match a {
                Action::Create { .. } => c.0 += 1,
                Action::Update { .. } => c.1 += 1,
                Action::Prune { .. } => c.2 += 1,
            }
        }
        c
    }
}

/// The body tend writes for a desired object: the object with the managed-by label and the
/// source-file annotation added.
pub fn managed_body(object: &Value, file: &str) -> Value {
    let mut body = object.clone();
    let meta = body
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Value::Object(labels) = labels {
            labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
        }
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Value::Object(annotations) = annotations {
            annotations.insert(SOURCE_FILE_ANNOTATION.into(), file.into());
        }
    }
    body
}

/// Whether an applied object is managed by tend.
pub fn is_managed(applied: &Value) -> bool {
    applied
        .pointer(&format!(
            "/metadata/labels/{}",
            MANAGED_BY_LABEL.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        == Some(MANAGED_BY_VALUE)
}

/// The part of an object that the source decides, for comparison and diffs.
pub fn projection(object: &Value) -> Value {
    let mut out = Map::new();
    for field in ["apiVersion", "kind"] {
        if let Some(v) = object.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    let mut meta = Map::new();
    if let Some(m) = object.get("metadata") {
        for field in ["name", "namespace", "labels"] {
            if let Some(v) = m.get(field) {
                meta.insert(field.into(), v.clone());
            }
        }
        if let Some(Value::Object(ann)) = m.get("annotations") {
            let kept: Map<String, Value> = ann
                .iter()
                .filter(|(k, _)| !is_volatile_annotation(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !kept.is_empty() {
                meta.insert("annotations".into(), Value::Object(kept));
            }
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    // Endpoints carry their content in `subsets`, outside any spec.
    for field in ["spec", "subsets"] {
        if let Some(v) = object.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// Copies what the control plane allocated (a Service's ClusterIP and NodePorts) from the
/// applied object into a desired one that leaves them out, so that re-applying a Service
/// keeps its address and ports, and so that allocation never shows up as a change.
pub fn carry_over_allocations(desired: &mut Value, applied: &Value) {
    if desired.get("kind").and_then(Value::as_str) != Some("Service") {
        return;
    }
    let Some(applied_spec) = applied.get("spec") else {
        return;
    };
    let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let desired_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let applied_ip = applied_spec.get("clusterIP").and_then(Value::as_str);
    let headless = |ip: Option<&str>| ip == Some("None");
    if !spec.contains_key("clusterIP") && desired_type != "ExternalName" {
        if let Some(ip) = applied_ip.filter(|ip| !headless(Some(ip)) && !ip.is_empty()) {
            spec.insert("clusterIP".into(), ip.into());
            spec.insert("clusterIPs".into(), json!([ip]));
        }
    } else if let (Some(ip), None) = (
        spec.get("clusterIP").and_then(Value::as_str),
        spec.get("clusterIPs"),
    ) {
        let ip = ip.to_string();
        if applied_ip == Some(ip.as_str()) {
            spec.insert("clusterIPs".into(), json!([ip]));
        }
    }
    if !matches!(desired_type.as_str(), "NodePort" | "LoadBalancer") {
        return;
    }
    let applied_ports = applied_spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for port in ports.iter_mut() {
            if port.get("nodePort").is_some() {
                continue;
            }
            let same = applied_ports.iter().find(|a| same_service_port(a, port));
            if let Some(node_port) = same.and_then(|a| a.get("nodePort")).cloned()
                && let Some(p) = port.as_object_mut()
            {
                p.insert("nodePort".into(), node_port);
            }
        }
    }
}

/// Service ports are the same when name and protocol match, or (unnamed) port and protocol.
fn same_service_port(a: &Value, b: &Value) -> bool {
    let proto = |v: &Value| {
        v.get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string()
    };
    if proto(a) != proto(b) {
        return false;
    }
    match (
        a.get("name").and_then(Value::as_str),
        b.get("name").and_then(Value::as_str),
    ) {
        (Some(x), Some(y)) if !x.is_empty() => x == y,
        _ => a.get("port") == b.get("port"),
    }
}

/// `want` with the controller-owned annotations of `have` added, so that a source update does
/// not erase, say, the Deployment controller's revision number.
fn keep_controller_annotations(want: &Value, have: &Value) -> Value {
    let mut out = want.clone();
    let Some(Value::Object(kept)) = have.pointer("/metadata/annotations") else {
        return out;
    };
    if let Some(Value::Object(meta)) = out.get_mut("metadata") {
        let ann = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Value::Object(ann) = ann {
            for (k, v) in kept.iter().filter(|(k, _)| is_controller_annotation(k)) {
                ann.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    out
}

/// Which applied objects a plan may prune.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every managed object: a full snapshot of the source.
    All,
    /// Managed objects whose source file is one of these (the files a revision changed).
    Files(BTreeSet<String>),
}

/// Compares desired bodies (already `managed_body` + `carry_over_allocations`) with applied
/// objects. `desired` holds every desired object in scope; `applied` holds at least every
/// applied object in scope (more is fine: out-of-scope objects are left alone).
pub fn plan(
    desired: &BTreeMap<ObjectKey, Value>,
    applied: &BTreeMap<ObjectKey, Value>,
    scope: &Scope,
) -> Plan {
    let mut actions = Vec::new();
    for (key, want) in desired {
        match applied.get(key) {
            None => actions.push(Action::Create {
                key: key.clone(),
                object: want.clone(),
            }),
            Some(have) => {
                let before = projection(have);
                let after = projection(want);
                if before != after {
                    let patch = json_patch::diff(&before, &after);
                    actions.push(Action::Update {
                        key: key.clone(),
                        before: have.clone(),
                        after: keep_controller_annotations(want, have),
                        patch,
                    });
                }
            }
        }
    }
    for (key, have) in applied {
        if desired.contains_key(key) || !is_managed(have) {
            continue;
        }
        let in_scope = match scope {
            Scope::All => true,
            Scope::Files(files) => have
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    SOURCE_FILE_ANNOTATION.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .is_some_and(|f| files.contains(f)),
        };
        if in_scope {
            actions.push(Action::Prune {
                key: key.clone(),
                before: have.clone(),
            });
        }
    }
    actions.sort_by(|a, b| a.key().cmp(b.key()));
    Plan { actions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;

    fn deployment(name: &str, image: &str, file: &str) -> Value {
        managed_body(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
                "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}}}),
            file,
        )
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Kind::Deployment, "default", name)
    }

    fn applied(mut v: Value) -> Value {
        // What the store adds must not count as a change.
        v["metadata"]["uid"] = json!("u-1");
        v["metadata"]["resourceVersion"] = json!("7");
        v["metadata"]["generation"] = json!(1);
        v["metadata"]["annotations"]["tend.dev/source-revision"] = json!("abc");
        v["status"] = json!({"replicas": 3});
        v
    }

    #[test]
    fn controller_annotations_are_neither_changes_nor_lost() {
        let mut have = applied(deployment("a", "web:v1", "a.yaml"));
        have["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("3");
        let a = BTreeMap::from([(key("a"), have)]);
        let same = BTreeMap::from([(key("a"), deployment("a", "web:v1", "a.yaml"))]);
        assert!(plan(&same, &a, &Scope::All).is_empty());
        let changed = BTreeMap::from([(key("a"), deployment("a", "web:v2", "a.yaml"))]);
        let p = plan(&changed, &a, &Scope::All);
        let Action::Update { after, .. } = &p.actions[0] else {
            panic!("{p:?}")
        };
        assert_eq!(
            after["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "3"
        );
    }

    #[test]
    fn unchanged_objects_get_no_action() {
        let d = BTreeMap::from([(key("a"), deployment("a", "web:v1", "a.yaml"))]);
        let a = BTreeMap::from([(key("a"), applied(deployment("a", "web:v1", "a.yaml")))]);
        assert!(plan(&d, &a, &Scope::All).is_empty());
    }

    #[test]
    fn create_update_prune_in_key_order_with_patch() {
        let d = BTreeMap::from([
            (key("a"), deployment("a", "web:v2", "a.yaml")),
            (key("c"), deployment("c", "web:v1", "c.yaml")),
        ]);
        let a = BTreeMap::from([
            (key("a"), applied(deployment("a", "web:v1", "a.yaml"))),
            (key("b"), applied(deployment("b", "web:v1", "b.yaml"))),
        ]);
        let p = plan(&d, &a, &Scope::All);
        assert_eq!(p.counts(), (1, 1, 1));
        let Action::Update { patch, .. } = &p.actions[0] else {
            panic!("{:?}", p.actions[0])
        };
        let ops = serde_json::to_value(patch).unwrap();
        assert_eq!(
            ops,
            json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "web:v2"}])
        );
        assert!(matches!(&p.actions[1], Action::Prune { key, .. } if key.name == "b"));
        assert!(matches!(&p.actions[2], Action::Create { key, .. } if key.name == "c"));
    }

    #[test]
    fn file_scope_prunes_only_objects_of_changed_files() {
        let d = BTreeMap::new();
        let a = BTreeMap::from([
            (key("a"), applied(deployment("a", "web:v1", "a.yaml"))),
            (key("b"), applied(deployment("b", "web:v1", "b.yaml"))),
        ]);
        let p = plan(
            &d,
            &a,
            &Scope::Files(BTreeSet::from(["b.yaml".to_string()])),
        );
        assert_eq!(p.actions.len(), 1);
        assert_eq!(p.actions[0].key().name, "b");
    }

    #[test]
    fn unmanaged_objects_are_never_pruned() {
        let mut other = deployment("x", "web:v1", "x.yaml");
        other["metadata"]["labels"] = json!({"app": "x"});
        let a = BTreeMap::from([(key("x"), other)]);
        assert!(plan(&BTreeMap::new(), &a, &Scope::All).is_empty());
    }

    #[test]
    fn services_keep_their_allocations() {
        let mut want = json!({"kind": "Service", "spec": {"type": "NodePort",
            "ports": [{"port": 80, "protocol": "TCP"}, {"name": "m", "port": 9090, "protocol": "TCP", "nodePort": 30999}]}});
        let have = json!({"kind": "Service", "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30123}, {"name": "m", "port": 9090, "protocol": "TCP", "nodePort": 30555}]}});
        carry_over_allocations(&mut want, &have);
        assert_eq!(want["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(want["spec"]["ports"][0]["nodePort"], 30123);
        // A port given in the source wins over the allocated one.
        assert_eq!(want["spec"]["ports"][1]["nodePort"], 30999);
    }
}
