//! The ReplicaSet controller and the garbage collector against a store fed by hand: ordered
//! actions (`RecordingStore`), a clock moved by the test, no nodes (the tests bind pods and
//! write their status as a scheduler and a node would).

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tend::api::{Kind, ObjectKey, ObjectMeta};
use tend::controller::gc::GarbageCollector;
use tend::controller::replicaset::ReplicaSetController;
use tend::controller::runtime::{Action, Clock, Context, FakeClock, Reconciler, WorkQueue, drain};
use tend::store::memory::MemoryStore;
use tend::store::recording::RecordingStore;
use tend::store::{Op, Store, WatchEvent, WatchEventType};

const RS: &str = "web-5d8f7c9b6";
const ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";

struct Harness {
    store: Arc<RecordingStore>,
    clock: Arc<FakeClock>,
    ctx: Context,
}

impl Harness {
    fn new() -> Harness {
        let store = Arc::new(RecordingStore::new(Arc::new(MemoryStore::new())));
        let clock = Arc::new(FakeClock::new(
            "2026-03-01T12:00:00Z".parse().expect("time"),
        ));
        let ctx = Context::new(store.clone(), clock.clone());
        Harness { store, clock, ctx }
    }

    /// Runs `rec` on `keys` until nothing is queued.
    fn run(&self, rec: &dyn Reconciler, keys: &[ObjectKey]) {
        let queue = WorkQueue::default();
        keys.iter().for_each(|k| queue.add(k.clone()));
        drain(rec, &self.ctx, &queue, 100);
    }

    /// Runs `rec` on the keys it derives from `events`.
    fn run_events(&self, rec: &dyn Reconciler, events: &[WatchEvent]) {
        let keys: Vec<ObjectKey> = events.iter().flat_map(|e| rec.keys_for(e)).collect();
        self.run(rec, &keys);
    }

    /// The recorded writes since the last call, without events.
    fn actions(&self) -> Vec<String> {
        self.store
            .take_lines()
            .into_iter()
            .filter(|l| !l.contains(" Event "))
            .collect()
    }

    fn get(&self, kind: Kind, name: &str) -> Option<Value> {
        self.store
            .get(&ObjectKey::new(kind, "default", name))
            .expect("get")
    }

    fn pods(&self) -> Vec<Value> {
        self.store.list(Kind::Pod, Some("default")).expect("list").0
    }

    fn pod_names(&self) -> Vec<String> {
        self.pods()
            .iter()
            .map(|p| p.meta_str("name").unwrap_or("?").to_string())
            .collect()
    }

    fn create(&self, object: Value) -> Value {
        let mut c = self.store.commit(vec![Op::Create(object)]).expect("create");
        self.store.take();
        c.objects.remove(0)
    }

    /// Binds `pod` to `node` (as the scheduler does) when given, and writes the status a node
    /// would: `phase`, and Ready=True since `ready_since` when given.
    fn observe(
        &self,
        pod: &str,
        node: Option<&str>,
        phase: &str,
        ready_since: Option<jiff::Timestamp>,
    ) {
        let mut object = self.get(Kind::Pod, pod).expect("pod exists");
        if let Some(node) = node {
            object["spec"]["nodeName"] = json!(node);
            let rv = object.resource_version();
            self.store
                .commit(vec![Op::Put {
                    object: object.clone(),
                    expect_rv: Some(rv),
                }])
                .expect("bind");
        }
        let mut status = json!({"phase": phase});
        if let Some(t) = ready_since {
            status["conditions"] = json!([{"type": "Ready", "status": "True",
                "lastTransitionTime": t.to_string()}]);
        }
        self.store
            .commit(vec![Op::PutStatus {
                key: ObjectKey::new(Kind::Pod, "default", pod),
                status,
                expect_rv: None,
            }])
            .expect("status");
        self.store.take();
    }

    fn scale(&self, name: &str, replicas: u64) {
        let mut rs = self.get(Kind::ReplicaSet, name).expect("rs");
        rs["spec"]["replicas"] = json!(replicas);
        self.store
            .commit(vec![Op::Put {
                object: rs,
                expect_rv: None,
            }])
            .expect("scale");
        self.store.take();
    }

    fn events(&self, reason: &str) -> Vec<String> {
        let mut messages: Vec<String> = self
            .store
            .list(Kind::Event, Some("default"))
            .expect("events")
            .0
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect();
        messages.sort();
        messages
    }
}

fn rs_key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::ReplicaSet, "default", name)
}

fn replica_set(name: &str, replicas: u64, owner: Option<&Value>) -> Value {
    let mut rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6"},
            "annotations": {"deployment.kubernetes.io/revision": "1"},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d8f7c9b6"}},
            "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": "5d8f7c9b6"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            },
        },
    });
    if let Some(owner) = owner {
        rs["metadata"]["ownerReferences"] = json!([tend::api::pod::owner_reference(owner)]);
    }
    rs
}

fn status(h: &Harness, name: &str) -> Value {
    h.get(Kind::ReplicaSet, name).expect("rs")["status"].clone()
}

/// Creates the ReplicaSet with `replicas` and lets the controller create its pods.
fn started(replicas: u64) -> (Harness, ReplicaSetController, Value) {
    let h = Harness::new();
    let rs = h.create(replica_set(RS, replicas, None));
    let controller = ReplicaSetController::new();
    h.run(&controller, &[rs_key(RS)]);
    h.actions();
    (h, controller, rs)
}

/// `create Pod web-5d8f7c9b6-xxxxx` with the random part replaced by `*`, after checking it.
fn generic(line: &str) -> String {
    match line.rsplit_once('-') {
        Some((head, suffix))
            if line.contains(" Pod ")
                && suffix.len() == 5
                && suffix.chars().all(|c| ALPHABET.contains(c)) =>
        {
            format!("{head}-*")
        }
        _ => line.to_string(),
    }
}

fn generic_actions(h: &Harness) -> Vec<String> {
    h.actions().iter().map(|l| generic(l)).collect()
}

#[test]
fn creates_three_pods_named_labelled_and_owned() {
    let h = Harness::new();
    let rs = h.create(replica_set(RS, 3, None));
    h.run(&ReplicaSetController::new(), &[rs_key(RS)]);

    // Slow start: batches of 1 and 2, each one transaction with the status counting them.
    let actions = h.actions();
    assert_eq!(
        actions.iter().map(|l| generic(l)).collect::<Vec<_>>(),
        [
            "create Pod web-5d8f7c9b6-*",
            "status ReplicaSet web-5d8f7c9b6",
            "create Pod web-5d8f7c9b6-*",
            "create Pod web-5d8f7c9b6-*",
            "status ReplicaSet web-5d8f7c9b6",
        ]
    );
    let mut created: Vec<String> = actions
        .iter()
        .filter(|l| l.starts_with("create Pod "))
        .map(|l| l.trim_start_matches("create Pod ").to_string())
        .collect();
    created.sort();
    assert_eq!(created, h.pod_names());
    for pod in h.pods() {
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], "5d8f7c9b6");
        assert_eq!(pod["metadata"]["generateName"], "web-5d8f7c9b6-");
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(owner["name"], RS);
        assert_eq!(owner["uid"], rs["metadata"]["uid"]);
        assert_eq!(owner["controller"], true);
        assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1.25");
        assert_eq!(pod["status"]["phase"], "Pending");
    }
    let created_events: Vec<String> = created
        .iter()
        .map(|n| format!("Created pod: {n}"))
        .collect();
    assert_eq!(h.events("SuccessfulCreate"), created_events);
    let st = status(&h, RS);
    assert_eq!(st["replicas"], 3);
    assert_eq!(st["fullyLabeledReplicas"], 3);
    assert_eq!(st["readyReplicas"], 0);
    assert_eq!(st["availableReplicas"], 0);
    assert_eq!(st["observedGeneration"], 1);

    // Nothing to do the second time: no writes at all.
    h.run(&ReplicaSetController::new(), &[rs_key(RS)]);
    assert_eq!(h.actions(), Vec::<String>::new());
}

#[test]
fn scales_up_then_down_deleting_unbound_and_not_ready_pods_first() {
    let (h, controller, _) = started(3);
    h.scale(RS, 5);
    h.run(&controller, &[rs_key(RS)]);
    assert_eq!(
        generic_actions(&h),
        [
            "create Pod web-5d8f7c9b6-*",
            "status ReplicaSet web-5d8f7c9b6",
            "create Pod web-5d8f7c9b6-*",
            "status ReplicaSet web-5d8f7c9b6",
        ]
    );
    assert_eq!(status(&h, RS)["replicas"], 5);
    assert_eq!(status(&h, RS)["observedGeneration"], 2);

    // p[0] unscheduled; p[1] running but not ready; p[2], p[3] ready on n1; p[4] ready on n2.
    let p = h.pod_names();
    let t = h.clock.now();
    h.observe(&p[1], Some("n2"), "Running", None);
    h.observe(&p[2], Some("n1"), "Running", Some(t));
    h.observe(&p[3], Some("n1"), "Running", Some(t));
    h.observe(&p[4], Some("n2"), "Running", Some(t));

    h.scale(RS, 2);
    h.run(&controller, &[rs_key(RS)]);
    let actions = h.actions();
    assert_eq!(actions.len(), 4, "{actions:?}");
    assert_eq!(
        actions[0],
        format!("delete Pod {}", p[0]),
        "unbound goes first, at once"
    );
    assert_eq!(
        actions[1],
        format!("put Pod {}", p[1]),
        "then the not ready pod, gracefully"
    );
    // Then a ready pod from the node holding two of them.
    assert!(
        actions[2] == format!("put Pod {}", p[2]) || actions[2] == format!("put Pod {}", p[3]),
        "{actions:?}"
    );
    assert_eq!(actions[3], "status ReplicaSet web-5d8f7c9b6");

    assert!(h.get(Kind::Pod, &p[0]).is_none());
    let marked = h
        .get(Kind::Pod, &p[1])
        .expect("bound pod stays until its node stops it");
    assert_eq!(
        marked["metadata"]["deletionTimestamp"],
        "2026-03-01T12:00:30Z"
    );
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    let st = status(&h, RS);
    assert_eq!(st["replicas"], 2);
    assert_eq!(st["readyReplicas"], 2);
    assert_eq!(h.events("SuccessfulDelete").len(), 3);

    // Terminating pods are not replicas: nothing more to delete, nothing to create.
    h.run(&controller, &[rs_key(RS)]);
    assert_eq!(h.actions(), Vec::<String>::new());
}

#[test]
fn available_replicas_wait_for_min_ready_seconds() {
    let h = Harness::new();
    let mut rs = replica_set(RS, 2, None);
    rs["spec"]["minReadySeconds"] = json!(10);
    h.create(rs);
    let controller = ReplicaSetController::new();
    h.run(&controller, &[rs_key(RS)]);
    h.actions();

    let p = h.pod_names();
    let t0 = h.clock.now();
    h.observe(&p[0], Some("n1"), "Running", Some(t0));
    h.observe(&p[1], Some("n1"), "Running", None);
    h.clock.advance(Duration::from_secs(4));
    assert_eq!(
        controller
            .reconcile(&rs_key(RS), &h.ctx)
            .expect("reconcile"),
        Action::RequeueAfter(Duration::from_secs(6)),
        "woken when the ready pod has been ready for 10s"
    );
    let st = status(&h, RS);
    assert_eq!(
        (st["readyReplicas"].clone(), st["availableReplicas"].clone()),
        (json!(1), json!(0))
    );

    h.clock.advance(Duration::from_secs(6));
    assert_eq!(
        controller
            .reconcile(&rs_key(RS), &h.ctx)
            .expect("reconcile"),
        Action::Done
    );
    assert_eq!(status(&h, RS)["availableReplicas"], 1);
}

#[test]
fn terminating_pods_are_replaced_and_not_counted() {
    let (h, controller, _) = started(3);
    let p = h.pod_names();
    h.observe(&p[0], Some("n1"), "Running", Some(h.clock.now()));
    let mut pod = h.get(Kind::Pod, &p[0]).expect("pod");
    pod["metadata"]["deletionTimestamp"] = json!("2026-03-01T12:00:30Z");
    h.store
        .commit(vec![Op::Put {
            object: pod,
            expect_rv: None,
        }])
        .expect("mark");
    h.store.take();

    h.run(&controller, &[rs_key(RS)]);
    assert_eq!(
        generic_actions(&h),
        [
            "create Pod web-5d8f7c9b6-*",
            "status ReplicaSet web-5d8f7c9b6"
        ],
        "a creation is committed with the status, which guards it"
    );
    assert_eq!(h.pods().len(), 4);
    let st = status(&h, RS);
    assert_eq!(st["replicas"], 3);
    assert_eq!(st["readyReplicas"], 0, "the ready pod is terminating");
}

#[test]
fn failed_pods_are_deleted_and_replaced() {
    let (h, controller, _) = started(2);
    let p = h.pod_names();
    h.observe(&p[0], Some("n1"), "Failed", None);
    h.observe(&p[1], None, "Failed", None);

    h.run(&controller, &[rs_key(RS)]);
    let actions = h.actions();
    assert_eq!(
        actions.iter().map(|l| generic(l)).collect::<Vec<_>>()[2..],
        [
            "create Pod web-5d8f7c9b6-*",
            "status ReplicaSet web-5d8f7c9b6",
            "create Pod web-5d8f7c9b6-*",
            "status ReplicaSet web-5d8f7c9b6"
        ]
    );
    let mut deletions = actions[..2].to_vec();
    deletions.sort();
    assert_eq!(
        deletions,
        [format!("delete Pod {}", p[1]), format!("put Pod {}", p[0])]
    );
    assert!(h.get(Kind::Pod, &p[0]).expect("bound")["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(status(&h, RS)["replicas"], 2);
}

fn orphan(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
        "status": {"phase": "Pending"},
    })
}

#[test]
fn adopts_matching_orphans_and_releases_pods_that_stop_matching() {
    let h = Harness::new();
    let controller = ReplicaSetController::new();
    let rs = h.create(replica_set(RS, 1, None));
    // The ReplicaSet is known to the controller before the orphan shows up.
    let rs_added = WatchEvent {
        event_type: WatchEventType::Added,
        object: rs.clone(),
        resource_version: 1,
    };
    assert_eq!(controller.keys_for(&rs_added), [rs_key(RS)]);
    let stray = h.create(orphan(
        "stray",
        json!({"app": "web", "pod-template-hash": "5d8f7c9b6"}),
    ));
    let other = h.create(orphan("other", json!({"app": "db"})));
    let pod_added = |object: &Value| WatchEvent {
        event_type: WatchEventType::Added,
        object: object.clone(),
        resource_version: 2,
    };
    assert_eq!(controller.keys_for(&pod_added(&stray)), [rs_key(RS)]);
    assert_eq!(
        controller.keys_for(&pod_added(&other)),
        Vec::<ObjectKey>::new()
    );

    h.run_events(&controller, &[pod_added(&stray)]);
    assert_eq!(
        h.actions(),
        ["put Pod stray", "status ReplicaSet web-5d8f7c9b6"],
        "adopted instead of creating a pod"
    );
    let adopted = h.get(Kind::Pod, "stray").expect("pod");
    assert_eq!(
        adopted["metadata"]["ownerReferences"][0]["uid"],
        rs["metadata"]["uid"]
    );
    assert_eq!(controller.keys_for(&pod_added(&adopted)), [rs_key(RS)]);

    // Relabelled (taken out for debugging, as with kubectl label): released and replaced.
    let mut relabelled = adopted.clone();
    relabelled["metadata"]["labels"] = json!({"app": "web-debug"});
    h.store
        .commit(vec![Op::Put {
            object: relabelled,
            expect_rv: None,
        }])
        .expect("relabel");
    h.store.take();
    h.run(&controller, &[rs_key(RS)]);
    let actions = generic_actions(&h);
    assert_eq!(actions[0], "put Pod stray");
    assert_eq!(actions[1], "create Pod web-5d8f7c9b6-*");
    let released = h.get(Kind::Pod, "stray").expect("pod kept");
    assert!(released["metadata"].get("ownerReferences").is_none());
    assert_eq!(status(&h, RS)["replicas"], 1);
}

#[test]
fn garbage_collector_deletes_replica_sets_of_a_deleted_deployment_then_their_pods() {
    let h = Harness::new();
    let deployment = h.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2},
    }));
    h.create(replica_set(RS, 2, Some(&deployment)));
    h.run(&ReplicaSetController::new(), &[rs_key(RS)]);
    let p = h.pod_names();
    h.observe(&p[0], Some("n1"), "Running", None);
    let gc = GarbageCollector::new();
    let rs_before = h.get(Kind::ReplicaSet, RS).expect("the ReplicaSet");

    // Owners present: nothing is garbage.
    let all = gc.initial_keys(&h.ctx).expect("keys");
    assert_eq!(all.len(), 3);
    h.actions();
    h.run(&gc, &all);
    assert_eq!(h.actions(), Vec::<String>::new());

    let deleted = h
        .store
        .commit(vec![Op::Delete {
            key: ObjectKey::new(Kind::Deployment, "default", "web"),
            expect_rv: None,
        }])
        .expect("delete deployment");
    h.store.take();
    let event = |object: &Value, rv| WatchEvent {
        event_type: WatchEventType::Deleted,
        object: object.clone(),
        resource_version: rv,
    };
    h.run_events(&gc, &[event(&deleted.objects[0], deleted.resource_version)]);
    assert_eq!(h.actions(), ["delete ReplicaSet web-5d8f7c9b6"]);

    let rs = h
        .store
        .list(Kind::ReplicaSet, Some("default"))
        .expect("list")
        .0;
    assert!(rs.is_empty());
    // The ReplicaSet's own deletion event (its last state, with its uid) takes its pods: the
    // bound one through its node.
    h.run_events(&gc, &[event(&rs_before, 99)]);
    let mut actions = h.actions();
    actions.sort();
    assert_eq!(
        actions,
        [format!("delete Pod {}", p[1]), format!("put Pod {}", p[0])]
    );
    let terminating = h.get(Kind::Pod, &p[0]).expect("bound pod");
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
}

#[test]
fn garbage_collector_deletes_pods_whose_replica_set_was_replaced() {
    let h = Harness::new();
    let old = h.create(replica_set(RS, 1, None));
    h.run(&ReplicaSetController::new(), &[rs_key(RS)]);
    let p = h.pod_names();
    // Deleted and created again under the same name: a new uid, the old pods are garbage.
    h.store
        .commit(vec![Op::Delete {
            key: rs_key(RS),
            expect_rv: None,
        }])
        .expect("delete");
    let new = h.create(replica_set(RS, 1, None));
    assert_ne!(old["metadata"]["uid"], new["metadata"]["uid"]);
    h.actions();

    let gc = GarbageCollector::new();
    let keys = gc.initial_keys(&h.ctx).expect("keys");
    h.run(&gc, &keys);
    assert_eq!(h.actions(), [format!("delete Pod {}", p[0])]);
}

/// A store that refuses to create pods while `refuse` is set (a full quota, a broken disk),
/// counting the attempts.
struct RefusingStore {
    inner: MemoryStore,
    refuse: std::sync::atomic::AtomicBool,
    attempts: std::sync::atomic::AtomicUsize,
}

impl Store for RefusingStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, tend::store::StoreError> {
        self.inner.get(key)
    }
    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64), tend::store::StoreError> {
        self.inner.list(kind, namespace)
    }
    fn commit(&self, ops: Vec<Op>) -> Result<tend::store::Committed, tend::store::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let creates_pods = ops
            .iter()
            .any(|op| matches!(op, Op::Create(o) if o["kind"] == "Pod"));
        if creates_pods && self.refuse.load(SeqCst) {
            self.attempts.fetch_add(1, SeqCst);
            return Err(tend::store::StoreError::Invalid {
                reason: "pods quota exceeded".into(),
            });
        }
        self.inner.commit(ops)
    }
    fn watch(&self, from_rv: u64) -> Result<tend::store::Watch, tend::store::StoreError> {
        self.inner.watch(from_rv)
    }
    fn current_rv(&self) -> u64 {
        self.inner.current_rv()
    }
}

#[test]
fn failed_creation_sets_replica_failure_until_pods_can_be_created() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(RefusingStore {
        inner: MemoryStore::new(),
        refuse: true.into(),
        attempts: 0.into(),
    });
    let clock = Arc::new(FakeClock::new("2026-03-01T12:00:00Z".parse().expect("t")));
    let ctx = Context::new(store.clone(), clock);
    store
        .commit(vec![Op::Create(replica_set(RS, 8, None))])
        .expect("rs");
    let controller = ReplicaSetController::new();

    let result = controller.reconcile(&rs_key(RS), &ctx);
    assert!(
        result.is_err(),
        "a failed creation backs off and retries: {result:?}"
    );
    assert_eq!(
        store.attempts.load(SeqCst),
        1,
        "slow start: one pod tried, not 8"
    );
    let rs = store.get(&rs_key(RS)).expect("get").expect("rs");
    let condition = &rs["status"]["conditions"][0];
    assert_eq!(condition["type"], "ReplicaFailure");
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "FailedCreate");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("pods quota exceeded")),
        "{condition}"
    );
    assert_eq!(rs["status"]["replicas"], 0);
    let (events, _) = store.list(Kind::Event, Some("default")).expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "FailedCreate" && e["type"] == "Warning")
    );

    store.refuse.store(false, SeqCst);
    assert_eq!(
        controller.reconcile(&rs_key(RS), &ctx).expect("reconcile"),
        Action::Done
    );
    let rs = store.get(&rs_key(RS)).expect("get").expect("rs");
    assert_eq!(rs["status"]["replicas"], 8);
    assert!(
        rs["status"].get("conditions").is_none(),
        "condition cleared: {}",
        rs["status"]
    );
    assert_eq!(
        store
            .list(Kind::Pod, Some("default"))
            .expect("pods")
            .0
            .len(),
        8
    );
}

/// Polls `check` until it holds or 5 s pass.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_driven_loop_creates_scales_and_collects() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ctx = Context::new(
        store.clone(),
        Arc::new(tend::controller::runtime::SystemClock),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loops = [
        tokio::spawn(tend::controller::runtime::run(
            Arc::new(ReplicaSetController::new()),
            ctx.clone(),
            stopped.clone(),
        )),
        tokio::spawn(tend::controller::runtime::run(
            Arc::new(GarbageCollector::new()),
            ctx.clone(),
            stopped,
        )),
    ];
    let pods = {
        let store = store.clone();
        move || store.list(Kind::Pod, Some("default")).expect("list").0
    };
    let deployment = store
        .commit(vec![Op::Create(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"}, "spec": {}}))])
        .expect("deployment")
        .objects
        .remove(0);
    store
        .commit(vec![Op::Create(replica_set(RS, 3, Some(&deployment)))])
        .expect("rs");
    eventually("3 pods", || pods().len() == 3).await;

    // An orphan with the ReplicaSet's labels is adopted, and the surplus pod removed.
    store
        .commit(vec![Op::Create(orphan(
            "stray",
            json!({"app": "web", "pod-template-hash": "5d8f7c9b6"}),
        ))])
        .expect("orphan");
    eventually("adoption and scale-down to 3", || {
        let p = pods();
        p.len() == 3
            && p.iter()
                .all(|p| p["metadata"]["ownerReferences"][0]["name"] == RS)
    })
    .await;

    store
        .commit(vec![Op::Delete {
            key: ObjectKey::new(Kind::Deployment, "default", "web"),
            expect_rv: None,
        }])
        .expect("delete deployment");
    eventually("the ReplicaSet and its pods collected", || {
        pods().is_empty()
            && store
                .list(Kind::ReplicaSet, Some("default"))
                .expect("list")
                .0
                .is_empty()
    })
    .await;

    stop.send(true).expect("stop");
    for l in loops {
        l.await.expect("loop ends");
    }
}

/// A store that, just before the first transaction creating a pod, commits a scale-down of
/// the ReplicaSet: the Deployment controller's write landing between the ReplicaSet
/// controller's read and its creation.
struct ScaledMeanwhile {
    inner: Arc<dyn Store>,
    to: u64,
    done: std::sync::atomic::AtomicBool,
}

impl Store for ScaledMeanwhile {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, tend::store::StoreError> {
        self.inner.get(key)
    }
    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64), tend::store::StoreError> {
        self.inner.list(kind, namespace)
    }
    fn commit(&self, ops: Vec<Op>) -> Result<tend::store::Committed, tend::store::StoreError> {
        let creates_pod = ops
            .iter()
            .any(|op| matches!(op, Op::Create(o) if o["kind"] == "Pod"));
        if creates_pod && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let key = ObjectKey::new(Kind::ReplicaSet, "default", RS);
            let mut rs = self.inner.get(&key)?.expect("rs");
            rs["spec"]["replicas"] = json!(self.to);
            self.inner.commit(vec![Op::Put {
                object: rs,
                expect_rv: None,
            }])?;
        }
        self.inner.commit(ops)
    }
    fn watch(&self, from_rv: u64) -> Result<tend::store::Watch, tend::store::StoreError> {
        self.inner.watch(from_rv)
    }
    fn current_rv(&self) -> u64 {
        self.inner.current_rv()
    }
}

#[test]
fn pods_are_only_created_for_the_spec_they_were_decided_from() {
    let h = Harness::new();
    h.create(replica_set(RS, 3, None));
    let store = Arc::new(ScaledMeanwhile {
        inner: h.store.clone(),
        to: 0,
        done: Default::default(),
    });
    let ctx = Context::new(store, h.clock.clone());
    let queue = WorkQueue::default();
    queue.add(rs_key(RS));
    drain(&ReplicaSetController::new(), &ctx, &queue, 100);
    // The first batch conflicted with the scale-down and the retry saw 0 replicas: no pod
    // was ever made beyond what the ReplicaSet asked for at the time.
    assert!(
        !h.actions().iter().any(|l| l.starts_with("create Pod")),
        "{:?}",
        h.actions()
    );
    assert!(h.pods().is_empty());
    assert_eq!(status(&h, RS)["replicas"], 0);
}
