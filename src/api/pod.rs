//! Pod and owner helpers shared by controllers, the scheduler and nodes: readiness,
//! availability (Ready for minReadySeconds), activity, and ownerReferences.
//!
//! Deleting a pod follows Kubernetes' graceful deletion: a pod bound to a node is marked with
//! `metadata.deletionTimestamp` (and `deletionGracePeriodSeconds`); its node stops it and then
//! deletes the object. A pod not bound to any node is deleted at once.

use serde_json::{Value, json};

/// The `Ready` condition is `True`.
pub fn is_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

/// Ready for at least `min_ready_seconds` at `now` (Kubernetes' IsPodAvailable).
pub fn is_available(pod: &Value, min_ready_seconds: i64, now: jiff::Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = ready_condition(pod)
        .and_then(|c| c.get("lastTransitionTime"))
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match since {
        Some(t) => now.as_second() - t.as_second() >= min_ready_seconds,
        None => false,
    }
}

/// Marked for deletion.
pub fn is_terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// Counts toward a ReplicaSet's replicas: not terminating, not Succeeded or Failed.
pub fn is_active(pod: &Value) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    !is_terminating(pod) && phase != "Succeeded" && phase != "Failed"
}

/// The node a pod is bound to.
pub fn node_name(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

/// The controlling owner's (kind, name, uid).
pub fn controller_of(object: &Value) -> Option<(&str, &str, &str)> {
    object
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find_map(|o| {
            if o.get("controller").and_then(Value::as_bool) != Some(true) {
                return None;
            }
            Some((
                o.get("kind")?.as_str()?,
                o.get("name")?.as_str()?,
                o.get("uid")?.as_str()?,
            ))
        })
}

/// An ownerReference naming `owner` as the controller.
pub fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": owner.get("kind").cloned().unwrap_or(Value::Null),
        "name": owner.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "uid": owner.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_availability_and_owners() {
        let pod = json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": true}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        assert!(is_ready(&pod) && is_active(&pod));
        let t0: jiff::Timestamp = "2026-01-01T00:00:05Z".parse().unwrap();
        assert!(is_available(&pod, 5, t0));
        assert!(!is_available(&pod, 6, t0));
        assert_eq!(controller_of(&pod), Some(("ReplicaSet", "web-1", "u")));
        let mut gone = pod.clone();
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:09Z");
        assert!(is_terminating(&gone) && !is_active(&gone));
        assert!(!is_ready(&json!({"status": {"phase": "Pending"}})));
    }
}
