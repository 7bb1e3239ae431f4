//! The Events a node reports about its pods, with the kubelet's reasons: `Pulling`, `Pulled`,
//! `Failed` (image pulls), `Created`, `Started`, `Killing` (containers) are noted by the pod
//! sync as it acts; `BackOff` (CrashLoopBackOff, ImagePullBackOff) comes from the status, when
//! a container enters the back-off ([`status_events`], pure). The server counts repeats.

use serde_json::{Value, json};

pub use crate::controller::events::{NORMAL, WARNING};

/// One event about a pod, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNote {
    pub event_type: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl PodNote {
    pub fn normal(reason: &'static str, message: String) -> Self {
        PodNote {
            event_type: NORMAL,
            reason,
            message,
        }
    }

    pub fn warning(reason: &'static str, message: String) -> Self {
        PodNote {
            event_type: WARNING,
            reason,
            message,
        }
    }
}

fn waiting_reasons(status: Option<&Value>) -> Vec<(String, String, String)> {
    status
        .and_then(|s| s.get("containerStatuses"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let text = |p: &str| {
                c.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (text("/name"), text("/image"), text("/state/waiting/reason"))
        })
        .collect()
}

/// The `BackOff` events of a status change: a container that now waits in CrashLoopBackOff or
/// ImagePullBackOff and did not before.
pub fn status_events(pod_name: &str, previous: Option<&Value>, next: &Value) -> Vec<PodNote> {
    let before = waiting_reasons(previous);
    waiting_reasons(Some(next))
        .into_iter()
        .filter(|(name, _, reason)| !before.iter().any(|(n, _, r)| n == name && r == reason))
        .filter_map(|(name, image, reason)| match reason.as_str() {
            "CrashLoopBackOff" => Some(PodNote::warning(
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod_name}"),
            )),
            "ImagePullBackOff" => Some(PodNote::normal(
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            )),
            _ => None,
        })
        .collect()
}

/// The Event object a node posts about `pod`.
pub fn event_object(pod: &Value, node: &str, note: &PodNote) -> Value {
    let meta = pod.get("metadata").cloned().unwrap_or_else(|| json!({}));
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta.get("name"),
            "namespace": meta.get("namespace").cloned().unwrap_or_else(|| json!("default")),
            "uid": meta.get("uid"),
        },
        "reason": note.reason,
        "message": note.message,
        "type": note.event_type,
        "source": {"component": "kubelet", "host": node},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(reason: &str) -> Value {
        json!({"containerStatuses": [{"name": "web", "image": "web:v1", "state": {"waiting": {"reason": reason}}}]})
    }

    #[test]
    fn back_off_events_on_entering_the_back_off_only() {
        let crash = status_events(
            "web-1",
            Some(&status("ContainerCreating")),
            &status("CrashLoopBackOff"),
        );
        assert_eq!(
            crash,
            vec![PodNote::warning(
                "BackOff",
                "Back-off restarting failed container web in pod web-1".into()
            )]
        );
        assert!(
            status_events(
                "web-1",
                Some(&status("CrashLoopBackOff")),
                &status("CrashLoopBackOff")
            )
            .is_empty()
        );
        let pull = status_events("web-1", None, &status("ImagePullBackOff"));
        assert_eq!(pull[0].message, "Back-off pulling image \"web:v1\"");
        assert_eq!(pull[0].event_type, NORMAL);
        assert!(status_events("web-1", None, &status("ErrImagePull")).is_empty());
    }

    #[test]
    fn event_objects_name_the_pod_and_the_node() {
        let pod = json!({"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"}});
        let e = event_object(
            &pod,
            "node01",
            &PodNote::normal("Started", "Started container web".into()),
        );
        assert_eq!(e["involvedObject"]["name"], "web-1");
        assert_eq!(e["involvedObject"]["namespace"], "shop");
        assert_eq!(e["involvedObject"]["uid"], "u1");
        assert_eq!(e["source"]["host"], "node01");
        assert_eq!(e["reason"], "Started");
    }
}
