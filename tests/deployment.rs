//! The Deployment controller against a store fed by hand: a stand-in "kubelet" plays the
//! ReplicaSet controller and the nodes (ReplicaSet statuses follow their specs, optionally one
//! step late so that each rolling step can be observed), and the tests compare the ordered
//! writes or the states the rollout passes through.

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tend::api::{Kind, ObjectKey, ObjectMeta};
use tend::controller::deployment::{
    AUTO_REVERT_ANNOTATION, DeploymentController, PROGRESSING, REASON_TIMED_OUT,
};
use tend::controller::rollout::{
    self, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
};
use tend::controller::runtime::{self, Context, FakeClock, Reconciler, WorkQueue};
use tend::source::SourceError;
use tend::source::write::{Edit, SourceWriter, Written};
use tend::store::memory::MemoryStore;
use tend::store::recording::RecordingStore;
use tend::store::{Op, Store, Watch};

const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// A Deployment as the source controller stores it.
fn deployment(replicas: i32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
            "annotations": {CHANGE_CAUSE: format!("c0ffee1 deploy {image}"), "tend.dev/source-file": "web.yaml"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
    })
}

fn with(mut d: Value, pointer: &str, value: Value) -> Value {
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    d.pointer_mut(parent).unwrap()[field] = value;
    d
}

#[derive(Default)]
struct FakeWriter {
    calls: Mutex<Vec<(ObjectKey, String, Edit, String)>>,
}

impl SourceWriter for FakeWriter {
    fn edit(
        &self,
        key: &ObjectKey,
        file: &str,
        edit: &Edit,
        message: &str,
    ) -> Result<Written, SourceError> {
        self.calls.lock().unwrap().push((
            key.clone(),
            file.to_string(),
            edit.clone(),
            message.to_string(),
        ));
        Ok(Written {
            revision: "beef123".into(),
        })
    }
}

struct Lab {
    store: Arc<RecordingStore>,
    clock: Arc<FakeClock>,
    ctx: Context,
    queue: Arc<WorkQueue>,
    watch: Watch,
    controller: DeploymentController,
}

impl Lab {
    fn new() -> Lab {
        Lab::with_writer(None)
    }

    fn with_writer(writer: Option<Arc<dyn SourceWriter>>) -> Lab {
        let store = Arc::new(RecordingStore::new(Arc::new(MemoryStore::new())));
        let clock = Arc::new(FakeClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
        let mut ctx = Context::new(store.clone(), clock.clone());
        ctx.source_writer = writer;
        let watch = store.watch(store.current_rv()).unwrap();
        Lab {
            store,
            clock,
            ctx,
            queue: WorkQueue::new(),
            watch,
            controller: DeploymentController,
        }
    }

    /// Writes a Deployment as the source controller does (no revision annotation, no guard).
    fn apply(&mut self, d: Value) {
        self.store
            .commit(vec![Op::Put {
                object: d,
                expect_rv: None,
            }])
            .unwrap();
        self.settle();
    }

    /// Feeds the store's changes to the controller until it has nothing left to do.
    fn settle(&mut self) {
        for _ in 0..50 {
            while let Some(event) = self.watch.try_next().unwrap() {
                for key in self.controller.keys_for(&event) {
                    self.queue.add(key);
                }
            }
            if self.queue.is_empty() {
                return;
            }
            runtime::drain(&self.controller, &self.ctx, &self.queue, 100);
        }
        panic!("the controller did not settle");
    }

    /// The "kubelet": each ReplicaSet's status follows its spec. With `lag`, pods that appear
    /// in this step become available only in the next one. Images containing "broken" never
    /// become available.
    fn kubelet(&mut self, lag: bool) {
        let (sets, _) = self.store.list(Kind::ReplicaSet, Some("default")).unwrap();
        let mut ops = Vec::new();
        for rs in sets {
            let spec = rs["spec"]["replicas"].as_i64().unwrap_or(0);
            let had = rs
                .pointer("/status/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let broken = rs["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .contains("broken");
            let available = if broken {
                0
            } else if lag {
                spec.min(had)
            } else {
                spec
            };
            let status = json!({"replicas": spec, "readyReplicas": available,
                "availableReplicas": available, "observedGeneration": rs["metadata"]["generation"]});
            if rs.get("status") != Some(&status) {
                ops.push(Op::PutStatus {
                    key: ObjectKey::of(&rs).unwrap(),
                    status,
                    expect_rv: None,
                });
            }
        }
        if !ops.is_empty() {
            self.store.commit(ops).unwrap();
        }
        self.settle();
    }

    /// Runs the kubelet until nothing changes, checking `invariant` at every step.
    fn run_to_completion(&mut self, lag: bool, mut invariant: impl FnMut(&Lab)) {
        for _ in 0..40 {
            let before = self.store.current_rv();
            self.kubelet(lag);
            invariant(self);
            if self.store.current_rv() == before {
                return;
            }
        }
        panic!("the rollout did not finish");
    }

    fn deployment(&self) -> Value {
        self.store
            .get(&ObjectKey::new(Kind::Deployment, "default", "web"))
            .unwrap()
            .unwrap()
    }

    /// The ReplicaSets by ascending revision.
    fn replica_sets(&self) -> Vec<Value> {
        let (mut sets, _) = self.store.list(Kind::ReplicaSet, Some("default")).unwrap();
        sets.sort_by_key(rollout::revision_of);
        sets
    }

    fn rs_with_image(&self, image: &str) -> Value {
        self.replica_sets()
            .into_iter()
            .find(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"] == image)
            .unwrap_or_else(|| panic!("no replica set for {image}"))
    }

    /// The sizes ReplicaSets were created with or set to since the last call, in order.
    fn scalings(&self) -> Vec<String> {
        let mut last = std::collections::HashMap::new();
        let mut out = Vec::new();
        for op in self.store.take() {
            let rs = match op {
                Op::Create(o) | Op::Put { object: o, .. } if o["kind"] == "ReplicaSet" => o,
                _ => continue,
            };
            let size = replicas(&rs);
            if last.insert(name(&rs), size) != Some(size) {
                out.push(format!("{}={size}", name(&rs)));
            }
        }
        out
    }

    /// Ordered writes since the last call; event names (hashes) shortened to `Event`.
    fn lines(&self) -> Vec<String> {
        self.store
            .take_lines()
            .into_iter()
            .map(|l| {
                if l.starts_with("put Event") {
                    "put Event".into()
                } else {
                    l
                }
            })
            .collect()
    }

    fn events(&self, reason: &str) -> Vec<String> {
        let (events, _) = self.store.list(Kind::Event, Some("default")).unwrap();
        events
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["message"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn condition(&self, kind: &str) -> Value {
        self.deployment()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn auto_revert(image: &str) -> Value {
    let mut d = deployment(3, image);
    d["metadata"]["annotations"][AUTO_REVERT_ANNOTATION] = json!("true");
    d
}

fn name(o: &Value) -> String {
    o.meta_str("name").unwrap().to_string()
}

fn replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap()
}

fn sum(lab: &Lab, pointer: &str) -> i64 {
    lab.replica_sets()
        .iter()
        .map(|rs| rs.pointer(pointer).and_then(Value::as_i64).unwrap_or(0))
        .sum()
}

#[test]
fn create_3_makes_one_replica_set_at_full_size() {
    let mut lab = Lab::new();
    lab.apply(deployment(3, "nginx:1.25"));
    let rs = lab.rs_with_image("nginx:1.25");
    let rs_name = name(&rs);
    let hash = rollout::pod_template_hash(&deployment(3, "nginx:1.25")["spec"]["template"], None);
    assert_eq!(rs_name, format!("web-{hash}"));
    assert_eq!(
        lab.lines(),
        vec![
            "put Deployment web".to_string(),
            format!("create ReplicaSet {rs_name}"),
            "put Event".into(),
            "put Deployment web".into(),
            "status Deployment web".into(),
        ]
    );
    assert_eq!(
        lab.events("ScalingReplicaSet"),
        vec![format!("Normal Scaled up replica set {rs_name} to 3")]
    );
    assert_eq!(replicas(&rs), 3);
    assert_eq!(rs["metadata"]["labels"]["pod-template-hash"], hash.as_str());
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash.as_str()
    );
    assert_eq!(
        rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"],
        hash.as_str()
    );
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(rs["metadata"]["annotations"][REVISION_ANNOTATION], "1");
    assert_eq!(
        rs["metadata"]["annotations"][DESIRED_REPLICAS_ANNOTATION],
        "3"
    );
    assert_eq!(rs["metadata"]["annotations"][MAX_REPLICAS_ANNOTATION], "4");
    assert_eq!(
        rs["metadata"]["annotations"][CHANGE_CAUSE],
        "c0ffee1 deploy nginx:1.25"
    );
    let d = lab.deployment();
    assert_eq!(d.annotation(REVISION_ANNOTATION), Some("1"));
    assert_eq!(lab.condition(PROGRESSING)["reason"], "NewReplicaSetCreated");
    assert_eq!(lab.condition("Available")["status"], "False");

    lab.run_to_completion(false, |_| {});
    let status = lab.deployment()["status"].clone();
    for field in [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ] {
        assert_eq!(status[field], 3, "{field}");
    }
    assert_eq!(status["unavailableReplicas"], 0);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        lab.condition(PROGRESSING)["reason"],
        "NewReplicaSetAvailable"
    );
    assert_eq!(
        lab.condition("Available")["reason"],
        "MinimumReplicasAvailable"
    );
}

#[test]
fn scale_3_to_4_resizes_the_replica_set() {
    let mut lab = Lab::new();
    lab.apply(deployment(3, "nginx:1.25"));
    lab.run_to_completion(false, |_| {});
    lab.lines();
    lab.apply(deployment(4, "nginx:1.25"));
    let rs = name(&lab.rs_with_image("nginx:1.25"));
    assert_eq!(
        lab.lines(),
        vec![
            "put Deployment web".to_string(),
            "put Deployment web".into(),
            format!("put ReplicaSet {rs}"),
            "put Event".into(),
            "status Deployment web".into(),
        ],
        "the source's write, the revision annotation restored, the scale"
    );
    assert!(
        lab.events("ScalingReplicaSet")
            .contains(&format!("Normal Scaled up replica set {rs} to 4"))
    );
    assert_eq!(lab.replica_sets().len(), 1);
    lab.run_to_completion(false, |_| {});
    assert_eq!(lab.deployment()["status"]["availableReplicas"], 4);
}

/// v1 -> v2 -> v3, each rolled out to completion.
fn three_versions(lab: &mut Lab) {
    for image in ["nginx:1", "nginx:2", "nginx:3"] {
        let mut d = deployment(3, image);
        d["metadata"]["annotations"][CHANGE_CAUSE] =
            json!(format!("c0ffee{} set {image}", &image[6..]));
        lab.apply(d);
        lab.run_to_completion(false, |_| {});
    }
}

#[test]
fn each_template_is_a_revision_with_its_change_cause() {
    let mut lab = Lab::new();
    three_versions(&mut lab);
    let history: Vec<(String, String, i64)> = lab
        .replica_sets()
        .iter()
        .map(|rs| {
            (
                rs.annotation(REVISION_ANNOTATION).unwrap().to_string(),
                rs.annotation(CHANGE_CAUSE).unwrap().to_string(),
                replicas(rs),
            )
        })
        .collect();
    assert_eq!(
        history,
        vec![
            ("1".into(), "c0ffee1 set nginx:1".into(), 0),
            ("2".into(), "c0ffee2 set nginx:2".into(), 0),
            ("3".into(), "c0ffee3 set nginx:3".into(), 3),
        ]
    );
    assert_eq!(lab.deployment().annotation(REVISION_ANNOTATION), Some("3"));
    assert_eq!(lab.deployment()["status"]["updatedReplicas"], 3);
}

#[test]
fn rollback_reuses_the_old_replica_set_with_the_next_revision() {
    let mut lab = Lab::new();
    three_versions(&mut lab);
    let v1 = lab.rs_with_image("nginx:1");
    lab.lines();
    let mut d = deployment(3, "nginx:1");
    d["metadata"]["annotations"][CHANGE_CAUSE] =
        json!("dead001 Roll back deployment/web to revision 1");
    lab.apply(d);
    lab.run_to_completion(false, |_| {});
    assert!(
        !lab.lines()
            .iter()
            .any(|l| l.starts_with("create ReplicaSet")),
        "no new replica set"
    );
    let revisions: Vec<(String, String)> = lab
        .replica_sets()
        .iter()
        .map(|rs| {
            let image = rs["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap();
            (
                rs.annotation(REVISION_ANNOTATION).unwrap().to_string(),
                image.to_string(),
            )
        })
        .collect();
    assert_eq!(
        revisions,
        vec![
            ("2".into(), "nginx:2".into()),
            ("3".into(), "nginx:3".into()),
            ("4".into(), "nginx:1".into()),
        ]
    );
    let reused = lab.rs_with_image("nginx:1");
    assert_eq!(name(&reused), name(&v1));
    assert_eq!(reused.annotation(REVISION_HISTORY_ANNOTATION), Some("1"));
    assert_eq!(
        reused.annotation(CHANGE_CAUSE),
        Some("dead001 Roll back deployment/web to revision 1")
    );
    assert_eq!(replicas(&reused), 3);
    assert_eq!(lab.deployment().annotation(REVISION_ANNOTATION), Some("4"));
}

fn surge_1_unavailable_0(replicas: i32, image: &str) -> Value {
    with(
        deployment(replicas, image),
        "/spec/strategy/rollingUpdate",
        json!({"maxSurge": 1, "maxUnavailable": 0}),
    )
}

#[test]
fn max_surge_1_max_unavailable_0_keeps_3_available_and_at_most_4_pods() {
    let mut lab = Lab::new();
    lab.apply(surge_1_unavailable_0(3, "nginx:1"));
    lab.run_to_completion(true, |_| {});
    let check = |lab: &Lab| {
        let pods = sum(lab, "/spec/replicas");
        let running = sum(lab, "/status/replicas");
        let available = sum(lab, "/status/availableReplicas");
        assert!(
            pods <= 4 && running <= 4,
            "{pods} pods wanted, {running} running"
        );
        assert!(available >= 3, "{available} available");
    };
    lab.apply(surge_1_unavailable_0(3, "nginx:2"));
    check(&lab);
    // First step: one new pod, no old one gone yet.
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 1);
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 3);
    let mut steps = 0;
    lab.run_to_completion(true, |lab| {
        check(lab);
        steps += 1;
    });
    assert!(
        steps >= 4,
        "the rollout moved one pod at a time ({steps} steps)"
    );
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 3);
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 0);
    assert_eq!(
        lab.condition(PROGRESSING)["reason"],
        "NewReplicaSetAvailable"
    );
    let scaling = lab.events("ScalingReplicaSet");
    let old = name(&lab.rs_with_image("nginx:1"));
    assert!(scaling.contains(&format!("Normal Scaled down replica set {old} to 0")));
}

#[test]
fn default_25_percent_first_steps_on_3_and_10_replicas() {
    // 3 replicas: maxSurge ceil(0.75) = 1, maxUnavailable floor(0.75) = 0.
    let mut lab = Lab::new();
    lab.apply(deployment(3, "nginx:1"));
    lab.run_to_completion(false, |_| {});
    lab.apply(deployment(3, "nginx:2"));
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 1);
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 3);

    // 10 replicas: maxSurge 3, maxUnavailable 2: 3 new pods and 2 old ones going at once.
    let mut lab = Lab::new();
    lab.apply(deployment(10, "nginx:1"));
    lab.run_to_completion(false, |_| {});
    lab.lines();
    lab.apply(deployment(10, "nginx:2"));
    let (old, new) = (
        name(&lab.rs_with_image("nginx:1")),
        name(&lab.rs_with_image("nginx:2")),
    );
    // The first sync: 3 new (surge), 2 old gone (unavailable). Kubernetes' next sync grows
    // the new one to 5 at once (the specs total 11 of the 13 allowed), while the 2 old pods
    // are still there: 15 pods. tend waits until they are gone (the old status says 8), so
    // that there are never more than 13.
    assert_eq!(lab.scalings(), vec![format!("{new}=3"), format!("{old}=8")]);
    lab.kubelet(true);
    assert_eq!(lab.scalings(), vec![format!("{new}=5")]);
    lab.run_to_completion(true, |lab| {
        assert!(sum(lab, "/spec/replicas") <= 13);
        assert!(sum(lab, "/status/availableReplicas") >= 8);
    });
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 10);
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 0);
}

#[test]
fn recreate_empties_the_old_replica_set_before_the_new_one_starts() {
    let recreate = |image: &str| {
        with(
            deployment(3, image),
            "/spec/strategy",
            json!({"type": "Recreate"}),
        )
    };
    let mut lab = Lab::new();
    lab.apply(recreate("nginx:1"));
    lab.run_to_completion(false, |_| {});
    let old = lab.rs_with_image("nginx:1");
    // A pod of the old ReplicaSet still terminating on its node.
    lab.store
        .commit(vec![Op::Create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{}-bcdfg", name(&old)), "namespace": "default",
                "labels": old["spec"]["template"]["metadata"]["labels"],
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name(&old),
                    "uid": old["metadata"]["uid"], "controller": true}]},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}))])
        .unwrap();
    lab.lines();
    lab.apply(recreate("nginx:2"));
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 0);
    assert_eq!(
        lab.replica_sets().len(),
        1,
        "no new replica set while old pods remain"
    );
    lab.kubelet(false);
    assert_eq!(
        lab.replica_sets().len(),
        1,
        "the terminating pod still blocks"
    );
    lab.store
        .commit(vec![Op::Delete {
            key: ObjectKey::new(Kind::Pod, "default", &format!("{}-bcdfg", name(&old))),
            expect_rv: None,
        }])
        .unwrap();
    lab.settle();
    let new = lab.rs_with_image("nginx:2");
    assert_eq!(replicas(&new), 3);
    let order: Vec<String> = lab
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("put ReplicaSet") || l.starts_with("create ReplicaSet"))
        .collect();
    assert_eq!(
        order,
        vec![
            format!("put ReplicaSet {}", name(&old)),
            format!("create ReplicaSet {}", name(&new)),
        ]
    );
    lab.run_to_completion(false, |_| {});
    assert_eq!(lab.deployment()["status"]["availableReplicas"], 3);
}

#[test]
fn paused_changes_roll_out_as_one_replica_set_on_resume() {
    let mut lab = Lab::new();
    lab.apply(deployment(3, "nginx:1"));
    lab.run_to_completion(false, |_| {});
    let paused =
        |image: &str, replicas: i32| with(deployment(replicas, image), "/spec/paused", json!(true));
    lab.apply(paused("nginx:1", 3));
    assert_eq!(lab.condition(PROGRESSING)["reason"], "DeploymentPaused");
    assert_eq!(lab.condition(PROGRESSING)["status"], "Unknown");
    lab.apply(paused("nginx:2", 3));
    lab.apply(paused("nginx:3", 3));
    lab.kubelet(false);
    assert_eq!(lab.replica_sets().len(), 1, "no rollout while paused");
    // Scaling still works while paused.
    lab.apply(paused("nginx:3", 5));
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 5);
    lab.kubelet(false);
    lab.lines();
    lab.apply(deployment(5, "nginx:3"));
    let created: Vec<String> = lab
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("create ReplicaSet"))
        .collect();
    assert_eq!(created.len(), 1);
    lab.run_to_completion(false, |_| {});
    assert_eq!(lab.replica_sets().len(), 2);
    assert_eq!(replicas(&lab.rs_with_image("nginx:3")), 5);
    assert_eq!(
        lab.rs_with_image("nginx:3").annotation(REVISION_ANNOTATION),
        Some("2")
    );
}

#[test]
fn a_stalled_rollout_exceeds_its_progress_deadline() {
    let mut lab = Lab::new();
    lab.apply(deployment(3, "nginx:1"));
    lab.run_to_completion(false, |_| {});
    lab.apply(deployment(3, "nginx:broken"));
    lab.run_to_completion(false, |_| {});
    assert_eq!(lab.condition(PROGRESSING)["status"], "True");
    // Not yet: the deadline runs from the last progress.
    lab.clock.advance(Duration::from_secs(599));
    lab.queue
        .add(ObjectKey::new(Kind::Deployment, "default", "web"));
    lab.settle();
    assert_eq!(lab.condition(PROGRESSING)["status"], "True");
    let key = ObjectKey::new(Kind::Deployment, "default", "web");
    let requeue = lab.controller.reconcile(&key, &lab.ctx).unwrap();
    assert_eq!(
        requeue,
        runtime::Action::RequeueAfter(Duration::from_secs(1))
    );
    lab.clock.advance(Duration::from_secs(2));
    lab.queue.add(key);
    lab.settle();
    let cond = lab.condition(PROGRESSING);
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], REASON_TIMED_OUT);
    let broken = name(&lab.rs_with_image("nginx:broken"));
    assert_eq!(
        cond["message"],
        format!("ReplicaSet \"{broken}\" has timed out progressing.")
    );
    // The old pods keep serving.
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 3);
}

#[test]
fn auto_revert_commits_the_last_good_template_once() {
    let writer = Arc::new(FakeWriter::default());
    let mut lab = Lab::with_writer(Some(writer.clone()));
    lab.apply(auto_revert("nginx:1"));
    lab.run_to_completion(false, |_| {});
    lab.apply(auto_revert("nginx:broken"));
    lab.run_to_completion(false, |_| {});
    assert!(writer.calls.lock().unwrap().is_empty());
    lab.clock.advance(Duration::from_secs(601));
    for _ in 0..2 {
        lab.queue
            .add(ObjectKey::new(Kind::Deployment, "default", "web"));
        lab.settle();
    }
    let calls = writer.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "reverted once");
    let (key, file, edit, message) = &calls[0];
    assert_eq!(key, &ObjectKey::new(Kind::Deployment, "default", "web"));
    assert_eq!(file, "web.yaml");
    assert_eq!(
        edit,
        &Edit::SetTemplate(deployment(3, "nginx:1")["spec"]["template"].clone())
    );
    let broken = name(&lab.rs_with_image("nginx:broken"));
    assert_eq!(
        message,
        &format!(
            "Auto-revert deployment/web to revision 1: ProgressDeadlineExceeded (ReplicaSet \"{broken}\" has timed out progressing.)"
        )
    );
    assert_eq!(
        lab.events("AutoReverted"),
        vec![format!("Normal {message}: wrote beef123")]
    );
    // The revert commit arrives through the source: the v1 ReplicaSet comes back.
    lab.apply(auto_revert("nginx:1"));
    lab.run_to_completion(false, |_| {});
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 3);
    assert_eq!(
        lab.rs_with_image("nginx:1").annotation(REVISION_ANNOTATION),
        Some("3")
    );
    assert_eq!(writer.calls.lock().unwrap().len(), 1);
}

#[test]
fn auto_revert_without_a_writer_warns() {
    let mut lab = Lab::new();
    lab.apply(auto_revert("nginx:1"));
    lab.run_to_completion(false, |_| {});
    lab.apply(auto_revert("nginx:broken"));
    lab.clock.advance(Duration::from_secs(601));
    lab.queue
        .add(ObjectKey::new(Kind::Deployment, "default", "web"));
    lab.settle();
    let failed = lab.events("AutoRevertFailed");
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].starts_with("Warning Auto-revert deployment/web to revision 1"),
        "{failed:?}"
    );
    assert!(failed[0].ends_with("no source writer)"), "{failed:?}");
}

#[test]
fn revision_history_limit_3_keeps_3_old_replica_sets() {
    let mut lab = Lab::new();
    for v in 1..=6 {
        lab.apply(with(
            deployment(2, &format!("nginx:{v}")),
            "/spec/revisionHistoryLimit",
            json!(3),
        ));
        lab.run_to_completion(false, |_| {});
    }
    let revisions: Vec<i64> = lab
        .replica_sets()
        .iter()
        .map(rollout::revision_of)
        .collect();
    assert_eq!(revisions, vec![3, 4, 5, 6]);
}

#[test]
fn scaling_mid_rollout_is_proportional() {
    let mut lab = Lab::new();
    lab.apply(deployment(10, "nginx:1"));
    lab.run_to_completion(false, |_| {});
    lab.apply(deployment(10, "nginx:2"));
    lab.kubelet(true);
    // Mid-rollout: old 8, new 5 (not yet available), both sized for 10 (+3 surge).
    let (old, new) = (lab.rs_with_image("nginx:1"), lab.rs_with_image("nginx:2"));
    assert_eq!((replicas(&old), replicas(&new)), (8, 5));
    lab.apply(deployment(15, "nginx:2"));
    let (old, new) = (lab.rs_with_image("nginx:1"), lab.rs_with_image("nginx:2"));
    // 15 + maxSurge 4 = 19 allowed; the 13 grow in proportion, largest first: old
    // round(8*19/13) = 12, new min(round(5*19/13) - 5, 6 - 4) = 7.
    assert_eq!((replicas(&old), replicas(&new)), (12, 7));
    for rs in [&old, &new] {
        assert_eq!(rs.annotation(DESIRED_REPLICAS_ANNOTATION), Some("15"));
        assert_eq!(rs.annotation(MAX_REPLICAS_ANNOTATION), Some("19"));
    }
    lab.run_to_completion(true, |_| {});
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 15);
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 0);
    assert_eq!(lab.deployment()["status"]["availableReplicas"], 15);
}

#[test]
fn a_taken_name_counts_a_collision_and_uses_the_next_hash() {
    let mut lab = Lab::new();
    let template = deployment(3, "nginx:1")["spec"]["template"].clone();
    let taken = format!("web-{}", rollout::pod_template_hash(&template, None));
    lab.store
        .commit(vec![Op::Create(
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": taken, "namespace": "default"},
            "spec": {"replicas": 0, "template": {"metadata": {"labels": {"app": "other"}}}}}),
        )])
        .unwrap();
    lab.apply(deployment(3, "nginx:1"));
    assert_eq!(lab.deployment()["status"]["collisionCount"], 1);
    let ours = lab.rs_with_image("nginx:1");
    assert_eq!(
        name(&ours),
        format!("web-{}", rollout::pod_template_hash(&template, Some(1)))
    );
    assert_eq!(replicas(&ours), 3);
}

#[test]
fn the_new_replica_set_grows_only_once_the_old_pods_are_gone() {
    let mut lab = Lab::new();
    lab.apply(surge_1_unavailable_0(3, "nginx:1"));
    lab.run_to_completion(false, |_| {});
    lab.apply(surge_1_unavailable_0(3, "nginx:2"));
    let status = |lab: &mut Lab, image: &str, replicas: i64, available: i64| {
        let rs = lab.rs_with_image(image);
        let status = json!({"replicas": replicas, "readyReplicas": available,
            "availableReplicas": available, "observedGeneration": rs["metadata"]["generation"]});
        lab.store
            .commit(vec![Op::PutStatus {
                key: ObjectKey::of(&rs).unwrap(),
                status,
                expect_rv: None,
            }])
            .unwrap();
        lab.settle();
    };
    // The new pod is available: the old ReplicaSet is scaled down to 2 ...
    status(&mut lab, "nginx:2", 1, 1);
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 2);
    // ... but while its 3 pods are still there (its controller has not removed one yet, as
    // after a conflict or a restart), a second new pod would make 5 > 3 + maxSurge 1.
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 1);
    // Once the old pod is gone, the new ReplicaSet grows.
    status(&mut lab, "nginx:1", 2, 2);
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 2);
    lab.run_to_completion(false, |lab| {
        let held: i64 = lab
            .replica_sets()
            .iter()
            .map(|rs| replicas(rs).max(rs["status"]["replicas"].as_i64().unwrap_or(0)))
            .sum();
        assert!(held <= 4, "{held} pods held");
    });
    assert_eq!(replicas(&lab.rs_with_image("nginx:2")), 3);
    assert_eq!(replicas(&lab.rs_with_image("nginx:1")), 0);
}
