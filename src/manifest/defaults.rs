//! The Kubernetes defaults for Deployments and Services, applied to the JSON object so
//! that a diff compares what will run, not how tersely it was written.

use crate::api::Kind;
use serde_json::{Map, Value, json};

/// Fills in every default DESIGN.md lists. Fields already given are kept.
pub fn apply(kind: Kind, object: &mut Value) {
    let Value::Object(top) = object else { return };
    if let Some(metadata) = object_field(top, "metadata") {
        set_default(metadata, "namespace", json!("default"));
    }
    if kind == Kind::Endpoints {
        endpoints(top);
        return;
    }
    let Some(spec) = object_field(top, "spec") else {
        return;
    };
    match kind {
        Kind::Deployment => deployment(spec),
        Kind::Service => service(spec),
        _ => {}
    }
}

/// `map[key]` as a mapping, created when absent or null; `None` when it is something
/// else (validation reports that).
fn object_field<'m>(
    map: &'m mut Map<String, Value>,
    key: &str,
) -> Option<&'m mut Map<String, Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = value;
    }
}

fn deployment(spec: &mut Map<String, Value>) {
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    if let Some(strategy) = object_field(spec, "strategy") {
        set_default(strategy, "type", json!("RollingUpdate"));
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(rolling) = object_field(strategy, "rollingUpdate")
        {
            set_default(rolling, "maxSurge", json!("25%"));
            set_default(rolling, "maxUnavailable", json!("25%"));
        }
    }
    if let Some(template) = object_field(spec, "template")
        && let Some(pod) = object_field(template, "spec")
    {
        pod_spec(pod);
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for container in containers.iter_mut().filter_map(Value::as_object_mut) {
                self::container(container);
            }
        }
    }
}

fn container(container: &mut Map<String, Value>) {
    if let Some(image) = container.get("image").and_then(Value::as_str) {
        let policy = if image_pulls_always(image) {
            "Always"
        } else {
            "IfNotPresent"
        };
        set_default(container, "imagePullPolicy", json!(policy));
    }
    if let Some(Value::Array(ports)) = container.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
        }
    }
}

/// Kubernetes pulls every time when the tag is `latest` or absent. A digest pins the
/// image; a `:port` in the registry host is not a tag (`host:5000/web` has none).
pub fn image_pulls_always(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// Endpoints ports default to TCP, as the API server defaults them.
fn endpoints(top: &mut Map<String, Value>) {
    let Some(Value::Array(subsets)) = top.get_mut("subsets") else {
        return;
    };
    for subset in subsets.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(Value::Array(ports)) = subset.get_mut("ports") {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                set_default(port, "protocol", json!("TCP"));
            }
        }
    }
}

fn service(spec: &mut Map<String, Value>) {
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
            if let Some(number) = port.get("port").cloned() {
                set_default(port, "targetPort", number);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert!(image_pulls_always("nginx"));
        assert!(image_pulls_always("nginx:latest"));
        assert!(image_pulls_always("192.168.1.21:5000/web"));
        assert!(image_pulls_always("host:5000/web:latest"));
        assert!(!image_pulls_always("192.168.1.21:5000/web:v1"));
        assert!(!image_pulls_always("nginx:1.7.9"));
        assert!(!image_pulls_always("nginx@sha256:80359bdf"));
        assert!(!image_pulls_always("r.io/a/nginx:v0.34.1@sha256:80359bdf"));
    }

    #[test]
    fn rolling_update_defaults_only_for_rolling_update() {
        let mut d = json!({"metadata": {"name": "a"}, "spec": {"strategy": {"type": "Recreate"}}});
        apply(Kind::Deployment, &mut d);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(d["metadata"]["namespace"], "default");
        assert_eq!(d["spec"]["replicas"], 1);
        let mut d = json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 1}}}});
        apply(Kind::Deployment, &mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
        assert_eq!(
            d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            "25%"
        );
    }

    #[test]
    fn service_target_port_defaults_to_port() {
        let mut s = json!({"spec": {"ports": [{"port": 80}, {"port": 81, "targetPort": "http"}]}});
        apply(Kind::Service, &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][1]["targetPort"], "http");
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
    }
}
