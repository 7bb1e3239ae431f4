//! Each controller's watch parses only the changes its `wants` accepts (by kind and type):
//! a change it passes by must be one its `keys_for` would have ignored anyway. Checked for
//! every controller, kind and event type on objects that trigger as much as they can.

use serde_json::{Value, json};
use std::time::Duration;
use tend::api::Kind;
use tend::controller::deployment::DeploymentController;
use tend::controller::endpoints::EndpointsController;
use tend::controller::gc::GarbageCollector;
use tend::controller::node::NodeController;
use tend::controller::replicaset::ReplicaSetController;
use tend::controller::runtime::Reconciler;
use tend::scheduler::controller::Scheduler;
use tend::store::{WatchEvent, WatchEventType};

const TYPES: [WatchEventType; 3] = [
    WatchEventType::Added,
    WatchEventType::Modified,
    WatchEventType::Deleted,
];

/// An object of `kind` that names everything a controller may follow: owners, labels, a
/// node, the Service of a slice; a pod that is pending (unbound) when `bound` is false.
fn object(kind: Kind, bound: bool) -> Value {
    let mut object = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "metadata": {
            "name": "x",
            "namespace": "default",
            "uid": "uid-x",
            "resourceVersion": "5",
            "labels": {"app": "web", "kubernetes.io/service-name": "web", "pod-template-hash": "abc"},
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": if kind == Kind::Pod { "ReplicaSet" } else { "Deployment" },
                "name": if kind == Kind::Pod { "web-abc" } else { "web" },
                "uid": "uid-owner",
                "controller": true,
            }],
        },
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "replicas": 1},
    });
    match kind {
        Kind::Pod => {
            if bound {
                object["spec"]["nodeName"] = json!("n1");
            }
            object["spec"]["containers"] = json!([{"name": "c", "image": "i"}]);
            object["status"] = json!({"phase": if bound { "Running" } else { "Pending" }, "podIP": "10.244.0.5",
                "conditions": [{"type": "Ready", "status": "True"}]});
        }
        Kind::Node => {
            object["metadata"]["namespace"] = json!("");
            object["metadata"]["name"] = json!("n1");
            object["status"] = json!({"conditions": [{"type": "Ready", "status": "False"}],
                "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}});
        }
        Kind::Service => {
            object["spec"] = json!({"selector": {"app": "web"}, "ports": [{"port": 80}]});
        }
        _ => {}
    }
    object
}

fn event(kind: Kind, event_type: WatchEventType, bound: bool) -> WatchEvent {
    WatchEvent {
        event_type,
        object: object(kind, bound),
        resource_version: 5,
    }
}

fn check(name: &str, controller: &dyn Reconciler) {
    let mut passed_by = 0;
    // Twice over: the first round fills what the controller remembers (selectors, pending
    // pods, Services), so that the second triggers the most.
    for round in 0..2 {
        for kind in Kind::ALL {
            for event_type in TYPES {
                for bound in [false, true] {
                    let event = event(kind, event_type, bound);
                    if controller.wants(kind, event_type) {
                        controller.keys_for(&event);
                        continue;
                    }
                    passed_by += 1;
                    if round == 1 {
                        assert!(
                            controller.keys_for(&event).is_empty(),
                            "{name} passes {kind:?} {event_type:?} by, but would react to it"
                        );
                    }
                }
            }
        }
    }
    assert!(passed_by > 0, "{name} wants every change");
}

#[test]
fn controllers_pass_by_only_changes_they_ignore() {
    check("deployment", &DeploymentController);
    check("replicaset", &ReplicaSetController::new());
    check("endpoints", &EndpointsController::new());
    check("gc", &GarbageCollector::new());
    check("scheduler", &Scheduler::new());
    let nodes = NodeController::new(Duration::from_secs(40), "10.244.0.0/16").expect("node ctrl");
    check("node", &nodes);
}

#[test]
fn each_controller_reacts_to_what_it_wants() {
    // The objects above do trigger: otherwise the test above would prove nothing.
    let deployment = &DeploymentController;
    assert!(
        !deployment
            .keys_for(&event(Kind::ReplicaSet, WatchEventType::Modified, true))
            .is_empty()
    );
    assert!(
        !deployment
            .keys_for(&event(Kind::Pod, WatchEventType::Deleted, true))
            .is_empty()
    );
    let gc = GarbageCollector::new();
    assert!(
        !gc.keys_for(&event(Kind::Pod, WatchEventType::Modified, true))
            .is_empty()
    );
    assert!(
        !gc.keys_for(&event(Kind::Service, WatchEventType::Deleted, true))
            .is_empty()
    );
    let scheduler = Scheduler::new();
    assert!(
        !scheduler
            .keys_for(&event(Kind::Pod, WatchEventType::Added, false))
            .is_empty()
    );
    assert!(
        !scheduler
            .keys_for(&event(Kind::Node, WatchEventType::Added, true))
            .is_empty()
    );
    let endpoints = EndpointsController::new();
    assert!(
        !endpoints
            .keys_for(&event(Kind::Service, WatchEventType::Added, true))
            .is_empty()
    );
    assert!(
        !endpoints
            .keys_for(&event(Kind::Pod, WatchEventType::Modified, true))
            .is_empty()
    );
}
