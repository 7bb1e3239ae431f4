//! Init containers (`spec.initContainers`) as the kubelet runs them: one at a time, in order,
//! each to a successful exit before the next; the app containers only after all of them.
//! Pure: [`plan_initializing`] answers while the pod initializes, [`report_initialized`]
//! completes the status afterwards.
//!
//! An init container is judged exactly as a pod with that one container would be: the pod
//! plan ([`pods::plan`]) runs on a copy of the pod whose only container is the init container,
//! so its image pull (ErrImagePull, ImagePullBackOff), CrashLoopBackOff back-off and reported
//! state come from the same code as the app containers'. Its restart policy is the pod's,
//! except that `Always` acts as `OnFailure` (a completed init container never runs again), as
//! in the kubelet; under `Never` a failed init container fails the pod.
//!
//! Initialization is done, for good, once every init container exited 0, or the app
//! containers have run, or the pod's status says so (condition Initialized True, or that init
//! container terminated with 0). An agent restarted with an empty memory reads it there: runc
//! has forgotten the exit codes of containers the new agent did not reap, so the runtime
//! alone would show the completed init containers as failed and run them again.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};

use super::pods::{self, ContainerObserved, ImageObserved, PodAction, PodObserved, PodPlan};
use super::runtime::restart::{self, Exit};

/// The waiting reason of containers held back by initialization (the kubelet's default
/// waiting reason in pods with init containers).
pub const POD_INITIALIZING: &str = "PodInitializing";

/// The pod's init containers, in order.
pub fn init_containers_of(pod: &Value) -> Vec<Container> {
    list(pod, "initContainers")
}

/// The pod's (app) containers, in order.
pub fn containers_of(pod: &Value) -> Vec<Container> {
    list(pod, "containers")
}

/// Every container of the pod, init containers first: what the syncer observes and acts on
/// (names are unique across both lists; validation enforces it).
pub fn all_containers_of(pod: &Value) -> Vec<Container> {
    let mut all = list(pod, "initContainers");
    all.extend(list(pod, "containers"));
    all
}

fn list(pod: &Value, field: &str) -> Vec<Container> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| serde_json::from_value(c.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The plan while the pod initializes: the current init container's actions (image, network,
/// start) and a status with `initContainerStatuses`, phase Pending (Failed when an init
/// container failed under `Never`), Initialized False, the app containers waiting
/// PodInitializing. `None` when there is nothing (left) to initialize: the pod plan goes on
/// with the app containers.
pub fn plan_initializing(pod: &Value, observed: &PodObserved, now: Timestamp) -> Option<PodPlan> {
    let inits = init_containers_of(pod);
    if inits.is_empty() || initialized(pod, observed) {
        return None;
    }
    let never = pod.pointer("/spec/restartPolicy").and_then(Value::as_str) == Some("Never");
    let mut tracked: std::collections::BTreeMap<_, _> = observed
        .containers
        .iter()
        .map(|(n, c)| (n.clone(), c.tracked))
        .collect();
    let mut statuses = Vec::new();
    let mut actions = Vec::new();
    let mut failed = false;
    let mut current = None;
    for (i, c) in inits.iter().enumerate() {
        if current.is_some() {
            statuses.push(waiting_entry(c, observed));
            continue;
        }
        if let Some(done) = completed_in_status(pod, &c.name) {
            statuses.push(done);
            continue;
        }
        let alone = pods::plan(&with_only(pod, c, never), observed, now);
        if let Some(t) = alone.tracked.get(&c.name) {
            tracked.insert(c.name.clone(), *t);
        }
        let mut entry = alone
            .actions
            .iter()
            .find_map(|a| match a {
                PodAction::ReportStatus(s) => s.pointer("/containerStatuses/0").cloned(),
                _ => None,
            })
            .unwrap_or_else(|| waiting_entry(c, observed));
        initializing_reason(&mut entry);
        entry["ready"] = json!(exit_code(&entry) == Some(0));
        if exit_code(&entry) == Some(0) {
            statuses.push(entry);
            continue;
        }
        failed = never && exit_code(&entry).is_some();
        actions.extend(
            alone
                .actions
                .into_iter()
                .filter(|a| !matches!(a, PodAction::ReportStatus(_))),
        );
        statuses.push(entry);
        current = Some(i);
    }
    let current = current?;

    let apps: Vec<Value> = list(pod, "containers")
        .iter()
        .map(|c| waiting_entry(c, observed))
        .collect();
    let mut status = pods::pod_status(pod, observed, &apps, now);
    status["phase"] = json!(if failed { "Failed" } else { "Pending" });
    status["initContainerStatuses"] = json!(statuses);
    let incomplete: Vec<&str> = inits[current..].iter().map(|c| c.name.as_str()).collect();
    not_initialized(&mut status, pod, &incomplete, now);
    actions.push(PodAction::ReportStatus(status));
    Some(PodPlan { actions, tracked })
}

/// Completes the status of an initialized pod with init containers: `initContainerStatuses`
/// (each terminated Completed) and the app containers not started yet waiting
/// PodInitializing rather than ContainerCreating, as the kubelet reports them.
pub fn report_initialized(pod: &Value, observed: &PodObserved, status: &mut Value) {
    let inits = init_containers_of(pod);
    if inits.is_empty() {
        return;
    }
    let entries: Vec<Value> = inits
        .iter()
        .map(|c| completed_entry(pod, c, observed))
        .collect();
    status["initContainerStatuses"] = json!(entries);
    if let Some(apps) = status
        .get_mut("containerStatuses")
        .and_then(Value::as_array_mut)
    {
        for entry in apps {
            initializing_reason(entry);
        }
    }
}

/// Whether initialization is over: the app containers have run, or the pod's status or the
/// runtime says every init container completed.
fn initialized(pod: &Value, observed: &PodObserved) -> bool {
    let apps: BTreeSet<String> = list(pod, "containers")
        .into_iter()
        .map(|c| c.name)
        .collect();
    let app_started = observed.containers.iter().any(|(name, c)| {
        apps.contains(name)
            && (c.runtime.is_some_and(|r| r != restart::Observed::Absent)
                || c.tracked.last_exit.is_some())
    });
    let condition = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Initialized")
                && c.get("status").and_then(Value::as_str) == Some("True")
        });
    app_started || condition
}

/// The previous status of init container `name` when it says the container completed.
fn completed_in_status(pod: &Value, name: &str) -> Option<Value> {
    pod.pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)?
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
        .filter(|s| exit_code(s) == Some(0))
        .cloned()
}

/// The pod copy whose only container is the init container `c`, with the init containers'
/// restart policy.
fn with_only(pod: &Value, c: &Container, never: bool) -> Value {
    let mut alone = pod.clone();
    if let Some(spec) = alone.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("initContainers");
        spec.insert(
            "containers".into(),
            json!([serde_json::to_value(c).unwrap_or(Value::Null)]),
        );
        spec.insert(
            "restartPolicy".into(),
            json!(if never { "Never" } else { "OnFailure" }),
        );
    }
    alone
}

fn exit_code(entry: &Value) -> Option<i64> {
    entry
        .pointer("/state/terminated/exitCode")
        .and_then(Value::as_i64)
}

/// ContainerCreating becomes PodInitializing (the kubelet's wording in pods with init
/// containers).
fn initializing_reason(entry: &mut Value) {
    if let Some(reason) = entry.pointer_mut("/state/waiting/reason")
        && reason == "ContainerCreating"
    {
        *reason = json!(POD_INITIALIZING);
    }
}

fn base_entry(c: &Container, o: Option<&ContainerObserved>) -> Value {
    let image_id = match o.map(|o| &o.image) {
        Some(ImageObserved::Ready { image_id }) => image_id.clone(),
        _ => String::new(),
    };
    json!({
        "name": c.name,
        "image": c.image.clone().unwrap_or_default(),
        "imageID": image_id,
        "restartCount": o.map(|o| o.tracked.restart_count).unwrap_or(0),
        "ready": false,
        "started": false,
        "lastState": {},
    })
}

/// A container held back by initialization.
fn waiting_entry(c: &Container, observed: &PodObserved) -> Value {
    let mut entry = base_entry(c, observed.containers.get(&c.name));
    entry["state"] = json!({"waiting": {"reason": POD_INITIALIZING}});
    entry
}

/// A completed init container of an initialized pod: as the pod's status last said once it
/// said Completed (a restarted agent no longer knows the times and image), else from the
/// runtime's exit, else plainly Completed (the pod is known to be initialized, e.g. its app
/// containers run after an agent restart).
fn completed_entry(pod: &Value, c: &Container, observed: &PodObserved) -> Value {
    if let Some(previous) = completed_in_status(pod, &c.name) {
        return previous;
    }
    let o = observed.containers.get(&c.name);
    let exit: Option<Exit> = match o.and_then(|o| o.runtime) {
        Some(restart::Observed::Exited(exit)) if exit.exit_code == 0 => Some(exit),
        _ => o
            .and_then(|o| o.tracked.last_exit)
            .filter(|e| e.exit_code == 0),
    };
    let mut entry = base_entry(c, o);
    entry["ready"] = json!(true);
    entry["state"] = match exit {
        Some(exit) => json!({"terminated": {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": exit.started_at.to_string(),
            "finishedAt": exit.finished_at.to_string(),
        }}),
        None => json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
    };
    entry
}

/// Sets the Initialized condition False (reason ContainersNotInitialized, naming the init
/// containers not completed), keeping its `lastTransitionTime` while it stays False.
fn not_initialized(status: &mut Value, pod: &Value, incomplete: &[&str], now: Timestamp) {
    let since = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Initialized"))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("False"))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now.to_string()));
    let condition = json!({
        "type": "Initialized",
        "status": "False",
        "reason": "ContainersNotInitialized",
        "message": format!("containers with incomplete status: [{}]", incomplete.join(" ")),
        "lastTransitionTime": since,
    });
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        match conditions
            .iter_mut()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Initialized"))
        {
            Some(slot) => *slot = condition,
            None => conditions.push(condition),
        }
    } else {
        status["conditions"] = json!([condition]);
    }
}
