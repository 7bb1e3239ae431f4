//! The scheduler: the pure core (filter, score, messages) on hand-made snapshots, and the
//! `Scheduler` reconciler on a store fed by hand.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tend::api::{Kind, ObjectKey};
use tend::controller::runtime::{self, Action, Context, FakeClock, Reconciler, WorkQueue};
use tend::scheduler::{PodRequirements, Scheduler, Snapshot, schedule};
use tend::store::memory::MemoryStore;
use tend::store::recording::RecordingStore;
use tend::store::{Op, Store};

fn node(name: &str, labels: Value, cpu: &str, memory: &str, pods: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": pods},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    })
}

fn plain_node(name: &str) -> Value {
    node(name, json!({}), "4", "8Gi", "110")
}

fn pod(name: &str, owner: &str, selector: Value, cpu: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                "uid": format!("uid-{owner}"), "controller": true}],
        },
        "spec": {
            "nodeSelector": selector,
            "containers": [{"name": "c", "image": "web:v1",
                "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
        },
    })
}

fn replica(owner: &str, i: usize) -> Value {
    pod(&format!("{owner}-{i}"), owner, json!({}), "100m", "64Mi")
}

fn with_host_port(mut pod: Value, port: u16, protocol: &str, ip: &str) -> Value {
    pod["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 80, "hostPort": port, "protocol": protocol, "hostIP": ip}]);
    pod
}

fn bound_to(mut pod: Value, node: &str) -> Value {
    pod["spec"]["nodeName"] = json!(node);
    pod
}

/// Schedules pods one after the other, counting each on its node (as the controller assumes
/// binds); returns the node of each, or the message.
fn place_all(snapshot: &mut Snapshot, pods: &[Value]) -> Vec<Result<String, String>> {
    pods.iter()
        .map(|p| {
            let requirements = PodRequirements::of(p);
            let placed = schedule(&requirements, snapshot).map_err(|e| e.message)?;
            snapshot.add_pod(&placed, &requirements);
            Ok(placed)
        })
        .collect()
}

fn per_node(placements: &[Result<String, String>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for p in placements {
        *counts.entry(p.clone().expect("placed")).or_default() += 1;
    }
    counts
}

// ----------------------------------------------------------------------------------------
// The pure core

#[test]
fn node_selector_puts_every_replica_on_the_one_labelled_node() {
    let nodes = [
        plain_node("n1"),
        node("n2", json!({"disk": "ssd"}), "4", "8Gi", "110"),
        plain_node("n3"),
    ];
    let mut snapshot = Snapshot::build(&nodes, &[]);
    let pods: Vec<Value> = (0..3)
        .map(|i| {
            pod(
                &format!("db-{i}"),
                "db",
                json!({"disk": "ssd"}),
                "100m",
                "64Mi",
            )
        })
        .collect();
    let placed = place_all(&mut snapshot, &pods);
    assert_eq!(per_node(&placed), BTreeMap::from([("n2".to_string(), 3)]));
}

#[test]
fn replicas_spread_over_identical_nodes() {
    let nodes = [plain_node("n1"), plain_node("n2"), plain_node("n3")];
    let mut snapshot = Snapshot::build(&nodes, &[]);
    let three: Vec<Value> = (0..3).map(|i| replica("web", i)).collect();
    let placed = place_all(&mut snapshot, &three);
    assert_eq!(per_node(&placed).values().collect::<Vec<_>>(), [&1, &1, &1]);

    let mut snapshot = Snapshot::build(&nodes, &[]);
    let six: Vec<Value> = (0..6).map(|i| replica("web", i)).collect();
    let placed = place_all(&mut snapshot, &six);
    assert_eq!(per_node(&placed).values().collect::<Vec<_>>(), [&2, &2, &2]);
}

#[test]
fn spreading_an_owner_comes_before_room_left() {
    // The first replica goes to the emptier n2; the second to the busy n1, because web
    // already has a pod on n2.
    let nodes = [plain_node("n1"), plain_node("n2")];
    let busy = bound_to(pod("big", "other", json!({}), "2", "4Gi"), "n1");
    let mut snapshot = Snapshot::build(&nodes, &[busy]);
    let placed = place_all(&mut snapshot, &[replica("web", 0), replica("web", 1)]);
    assert_eq!(placed, [Ok("n2".to_string()), Ok("n1".to_string())]);
}

#[test]
fn least_requested_node_wins_among_equals_for_the_owner() {
    let nodes = [plain_node("n1"), plain_node("n2"), plain_node("n3")];
    let pods = [
        bound_to(pod("a", "other", json!({}), "1", "1Gi"), "n1"),
        bound_to(pod("b", "other", json!({}), "500m", "512Mi"), "n2"),
        bound_to(pod("c", "other", json!({}), "2", "2Gi"), "n3"),
    ];
    let snapshot = Snapshot::build(&nodes, &pods);
    let placed = schedule(&PodRequirements::of(&replica("web", 0)), &snapshot);
    assert_eq!(placed, Ok("n2".to_string()));
}

#[test]
fn resources_must_fit_what_is_left() {
    let nodes = [node("n1", json!({}), "1", "1Gi", "2")];
    let mut snapshot = Snapshot::build(&nodes, &[]);
    let pods = [
        pod("a", "x", json!({}), "600m", "256Mi"),
        pod("b", "x", json!({}), "600m", "256Mi"),
        pod("c", "x", json!({}), "300m", "900Mi"),
        pod("d", "x", json!({}), "600m", "900Mi"),
        pod("e", "x", json!({}), "0", "0"),
        pod("f", "x", json!({}), "0", "0"),
    ];
    let placed = place_all(&mut snapshot, &pods);
    assert_eq!(placed[0], Ok("n1".to_string()));
    assert_eq!(
        placed[1],
        Err("0/1 nodes are available: 1 Insufficient cpu.".to_string())
    );
    assert_eq!(
        placed[2],
        Err("0/1 nodes are available: 1 Insufficient memory.".to_string())
    );
    // Every short resource of a node is counted, as NodeResourcesFit reports them all.
    assert_eq!(
        placed[3],
        Err("0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.".to_string())
    );
    assert_eq!(placed[4], Ok("n1".to_string()), "zero requests always fit");
    assert_eq!(
        placed[5],
        Err("0/1 nodes are available: 1 Too many pods.".to_string())
    );
}

#[test]
fn unset_requests_fit_anywhere_and_limits_stand_in_for_requests() {
    let mut no_requests = replica("web", 0);
    no_requests["spec"]["containers"][0]["resources"] = json!({});
    let r = PodRequirements::of(&no_requests);
    assert_eq!((r.requests.milli_cpu, r.requests.memory), (0, 0));
    assert_eq!(
        (r.score_requests.milli_cpu, r.score_requests.memory),
        (100, 200 << 20)
    );

    let mut limited = replica("web", 0);
    limited["spec"]["containers"][0]["resources"] =
        json!({"limits": {"cpu": "2", "memory": "1Gi"}});
    limited["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": "s", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}));
    limited["spec"]["initContainers"] = json!([{"name": "init", "image": "i", "resources": {"requests": {"cpu": "3", "memory": "16Mi"}}}]);
    let r = PodRequirements::of(&limited);
    assert_eq!(r.requests.milli_cpu, 3000, "the largest init container");
    assert_eq!(
        r.requests.memory,
        (1 << 30) + (64 << 20),
        "the containers' sum"
    );
}

#[test]
fn host_ports_clash_only_on_the_same_port_protocol_and_address() {
    let nodes = [plain_node("n1"), plain_node("n2")];
    let taken = bound_to(with_host_port(replica("a", 0), 8080, "TCP", ""), "n1");
    let snapshot = Snapshot::build(&nodes, std::slice::from_ref(&taken));
    let again = with_host_port(replica("b", 0), 8080, "TCP", "");
    assert_eq!(
        schedule(&PodRequirements::of(&again), &snapshot),
        Ok("n2".to_string())
    );
    // On a single node only the port decides.
    let one = Snapshot::build(&nodes[..1], std::slice::from_ref(&taken));
    assert_eq!(
        schedule(&PodRequirements::of(&again), &one).map_err(|e| e.message),
        Err("0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
            .to_string())
    );
    let udp = with_host_port(replica("b", 0), 8080, "UDP", "");
    assert_eq!(
        schedule(&PodRequirements::of(&udp), &one),
        Ok("n1".to_string())
    );
    let other_port = with_host_port(replica("b", 0), 8081, "TCP", "");
    assert_eq!(
        schedule(&PodRequirements::of(&other_port), &one),
        Ok("n1".to_string())
    );

    let on_ip = bound_to(
        with_host_port(replica("a", 0), 9000, "TCP", "10.0.0.1"),
        "n1",
    );
    let one = Snapshot::build(&nodes[..1], std::slice::from_ref(&on_ip));
    let other_ip = with_host_port(replica("b", 0), 9000, "TCP", "10.0.0.2");
    assert_eq!(
        schedule(&PodRequirements::of(&other_ip), &one),
        Ok("n1".to_string())
    );
    let any_ip = with_host_port(replica("b", 0), 9000, "TCP", "0.0.0.0");
    assert!(schedule(&PodRequirements::of(&any_ip), &one).is_err());
}

#[test]
fn not_ready_and_cordoned_nodes_are_skipped() {
    let mut not_ready = plain_node("n1");
    not_ready["status"]["conditions"][0]["status"] = json!("Unknown");
    let mut cordoned = plain_node("n2");
    cordoned["spec"]["unschedulable"] = json!(true);
    let mut no_conditions = plain_node("n4");
    no_conditions["status"]
        .as_object_mut()
        .unwrap()
        .remove("conditions");
    let nodes = [
        not_ready.clone(),
        cordoned.clone(),
        plain_node("n3"),
        no_conditions.clone(),
    ];
    let mut snapshot = Snapshot::build(&nodes, &[]);
    let placed = place_all(
        &mut snapshot,
        &(0..3).map(|i| replica("web", i)).collect::<Vec<_>>(),
    );
    assert_eq!(per_node(&placed), BTreeMap::from([("n3".to_string(), 3)]));

    let snapshot = Snapshot::build(&[not_ready, cordoned, no_conditions], &[]);
    assert_eq!(
        schedule(&PodRequirements::of(&replica("web", 0)), &snapshot).map_err(|e| e.message),
        Err(
            "0/3 nodes are available: 2 node(s) were not ready, 1 node(s) were unschedulable."
                .to_string()
        )
    );
}

#[test]
fn the_message_counts_the_first_failing_filter_of_each_node_sorted_as_kubernetes_does() {
    // Kubernetes sorts the "COUNT reason" strings themselves (Go's sort.Strings), so the
    // count leads: "1 Insufficient memory" before "2 node(s) didn't match node selector".
    let nodes = [
        plain_node("n1"),
        plain_node("n2"),
        node("n3", json!({"disk": "ssd"}), "4", "128Mi", "110"),
    ];
    let snapshot = Snapshot::build(&nodes, &[]);
    let wants_ssd = pod("db-0", "db", json!({"disk": "ssd"}), "100m", "1Gi");
    assert_eq!(
        schedule(&PodRequirements::of(&wants_ssd), &snapshot).map_err(|e| e.message),
        Err(
            "0/3 nodes are available: 2 node(s) didn't match node selector, 1 Insufficient memory."
                .to_string()
        )
    );

    // A selector value no node has at all, and the string order with two-digit counts.
    let mut many: Vec<Value> = (0..10).map(|i| plain_node(&format!("a{i}"))).collect();
    many.extend((0..2).map(|i| node(&format!("b{i}"), json!({"disk": "hdd"}), "1", "1Gi", "0")));
    let snapshot = Snapshot::build(&many, &[]);
    let wants_hdd = pod("x-0", "x", json!({"disk": "hdd"}), "100m", "64Mi");
    assert_eq!(
        schedule(&PodRequirements::of(&wants_hdd), &snapshot).map_err(|e| e.message),
        Err(
            "0/12 nodes are available: 10 node(s) didn't match node selector, 2 Too many pods."
                .to_string()
        )
    );
    let wants_nvme = pod("x-1", "x", json!({"disk": "nvme"}), "100m", "64Mi");
    assert_eq!(
        schedule(&PodRequirements::of(&wants_nvme), &snapshot).map_err(|e| e.message),
        Err("0/12 nodes are available: 12 node(s) didn't match node selector.".to_string())
    );
    assert_eq!(
        schedule(&PodRequirements::of(&wants_nvme), &Snapshot::new()).map_err(|e| e.message),
        Err("no nodes available to schedule pods".to_string())
    );
}

#[test]
fn snapshot_updates_incrementally() {
    let mut snapshot = Snapshot::build(&[node("n1", json!({}), "1", "1Gi", "110")], &[]);
    let big = PodRequirements::of(&pod("a", "x", json!({}), "800m", "64Mi"));
    assert!(snapshot.add_pod("n1", &big));
    assert!(schedule(&big, &snapshot).is_err());
    snapshot.remove_pod("n1", &big);
    assert_eq!(schedule(&big, &snapshot), Ok("n1".to_string()));
    let n1 = snapshot.node("n1").unwrap();
    assert_eq!((n1.pods, n1.requested.milli_cpu), (0, 0));

    // A label change through an update keeps what the node's pods use.
    snapshot.add_pod("n1", &big);
    let ssd = tend::scheduler::NodeSpec::of(&node("n1", json!({"disk": "ssd"}), "2", "1Gi", "110"))
        .unwrap();
    snapshot.upsert_node(ssd);
    let wants_ssd = PodRequirements::of(&pod("b", "y", json!({"disk": "ssd"}), "800m", "64Mi"));
    assert_eq!(schedule(&wants_ssd, &snapshot), Ok("n1".to_string()));
    assert_eq!(snapshot.node("n1").unwrap().pods, 1);
    snapshot.remove_node("n1");
    assert!(snapshot.nodes().is_empty());
}

// ----------------------------------------------------------------------------------------
// The reconciler

struct Harness {
    store: Arc<MemoryStore>,
    recorded: Arc<RecordingStore>,
    ctx: Context,
    scheduler: Scheduler,
    queue: Arc<WorkQueue>,
}

impl Harness {
    fn new() -> Harness {
        let store = Arc::new(MemoryStore::new());
        let recorded = Arc::new(RecordingStore::new(store.clone()));
        let clock = Arc::new(FakeClock::new("2026-03-01T10:00:00Z".parse().unwrap()));
        let ctx = Context::new(recorded.clone(), clock);
        Harness {
            store,
            recorded,
            ctx,
            scheduler: Scheduler::new(),
            queue: WorkQueue::new(),
        }
    }

    fn create(&self, objects: &[Value]) {
        self.store
            .commit(objects.iter().cloned().map(Op::Create).collect())
            .unwrap();
    }

    fn start(&self) {
        for key in self.scheduler.initial_keys(&self.ctx).unwrap() {
            self.queue.add(key);
        }
    }

    /// Feeds the store's changes since `rv` to `keys_for`, as the runtime's watcher does.
    fn watch_from(&self, rv: u64) {
        let mut watch = self.store.watch(rv).unwrap();
        while let Some(event) = watch.try_next().unwrap() {
            for key in self.scheduler.keys_for(&event) {
                self.queue.add(key);
            }
        }
    }

    fn drain(&self) -> usize {
        runtime::drain(&self.scheduler, &self.ctx, &self.queue, 100)
    }

    fn pod(&self, name: &str) -> Value {
        self.store
            .get(&ObjectKey::new(Kind::Pod, "default", name))
            .unwrap()
            .unwrap()
    }

    /// The lines of the writes, with events named by reason and message.
    fn lines(&self) -> Vec<String> {
        self.recorded
            .take()
            .iter()
            .map(|op| match op {
                Op::Put { object, .. } if object["kind"] == "Event" => format!(
                    "event {} {} {}: {}",
                    object["involvedObject"]["name"].as_str().unwrap(),
                    object["type"].as_str().unwrap(),
                    object["reason"].as_str().unwrap(),
                    object["message"].as_str().unwrap()
                ),
                Op::Put { object, .. } => format!(
                    "put {} {} nodeName={}",
                    object["kind"].as_str().unwrap(),
                    object["metadata"]["name"].as_str().unwrap(),
                    object["spec"]["nodeName"].as_str().unwrap_or("-")
                ),
                Op::PutStatus { key, .. } => format!("status {} {}", key.kind, key.name),
                other => format!("{other:?}"),
            })
            .collect()
    }
}

fn pod_scheduled(pod: &Value) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
        .unwrap()
}

#[test]
fn pending_pods_are_bound_with_a_condition_and_an_event() {
    let h = Harness::new();
    h.create(&[plain_node("n1"), plain_node("n2"), plain_node("n3")]);
    h.create(&(0..3).map(|i| replica("web", i)).collect::<Vec<_>>());
    h.start();
    assert_eq!(h.drain(), 3);
    let lines = h.lines();
    assert_eq!(
        lines,
        [
            "put Pod web-0 nodeName=n1",
            "status Pod web-0",
            "event web-0 Normal Scheduled: Successfully assigned default/web-0 to n1",
            "put Pod web-1 nodeName=n2",
            "status Pod web-1",
            "event web-1 Normal Scheduled: Successfully assigned default/web-1 to n2",
            "put Pod web-2 nodeName=n3",
            "status Pod web-2",
            "event web-2 Normal Scheduled: Successfully assigned default/web-2 to n3",
        ]
    );
    let web0 = h.pod("web-0");
    assert_eq!(web0["spec"]["nodeName"], "n1");
    assert_eq!(web0["status"]["phase"], "Pending");
    let condition = pod_scheduled(&web0);
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["lastTransitionTime"], "2026-03-01T10:00:00Z");
    let (events, _) = h.store.list(Kind::Event, Some("default")).unwrap();
    let scheduled = events
        .iter()
        .find(|e| e["involvedObject"]["name"] == "web-0")
        .unwrap();
    assert_eq!(scheduled["source"]["component"], "default-scheduler");
    assert_eq!(scheduled["involvedObject"]["kind"], "Pod");

    // Bound pods are not scheduled again.
    h.start();
    assert_eq!(h.drain(), 0);
}

#[test]
fn a_pod_that_fits_nowhere_waits_and_is_scheduled_once_a_node_gets_the_label() {
    let h = Harness::new();
    h.create(&[plain_node("n1"), plain_node("n2")]);
    h.create(&[pod("db-0", "db", json!({"disk": "ssd"}), "100m", "64Mi")]);
    h.start();
    let key = ObjectKey::new(Kind::Pod, "default", "db-0");
    assert_eq!(
        h.scheduler.reconcile(&key, &h.ctx).unwrap(),
        Action::RequeueAfter(Duration::from_secs(5))
    );
    let message = "0/2 nodes are available: 2 node(s) didn't match node selector.";
    assert_eq!(
        h.lines(),
        [
            "status Pod db-0".to_string(),
            format!("event db-0 Warning FailedScheduling: {message}"),
        ]
    );
    let db = h.pod("db-0");
    let condition = pod_scheduled(&db);
    assert_eq!(
        (
            &condition["status"],
            &condition["reason"],
            &condition["message"]
        ),
        (&json!("False"), &json!("Unschedulable"), &json!(message))
    );
    assert!(db["spec"].get("nodeName").is_none());

    // Trying again changes no status, only counts the event again.
    h.queue.add(key.clone());
    h.drain();
    assert_eq!(
        h.lines(),
        [format!("event db-0 Warning FailedScheduling: {message}")]
    );
    let (events, _) = h.store.list(Kind::Event, Some("default")).unwrap();
    assert_eq!(events[0]["count"], 2);

    // A heartbeat retries nothing; the label does.
    let rv = h.store.current_rv();
    let mut n2 = h
        .store
        .get(&ObjectKey::new(Kind::Node, "", "n2"))
        .unwrap()
        .unwrap();
    n2["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-03-01T10:00:02Z");
    h.store
        .commit(vec![Op::PutStatus {
            key: ObjectKey::new(Kind::Node, "", "n2"),
            status: n2["status"].clone(),
            expect_rv: None,
        }])
        .unwrap();
    h.watch_from(rv);
    assert!(h.queue.is_empty(), "a heartbeat is not a reason to retry");

    let rv = h.store.current_rv();
    let mut n2 = h
        .store
        .get(&ObjectKey::new(Kind::Node, "", "n2"))
        .unwrap()
        .unwrap();
    n2["metadata"]["labels"] = json!({"disk": "ssd"});
    h.store
        .commit(vec![Op::Put {
            object: n2,
            expect_rv: None,
        }])
        .unwrap();
    h.recorded.take();
    h.watch_from(rv);
    assert_eq!(h.queue.len(), 1);
    h.drain();
    assert_eq!(
        h.lines(),
        [
            "put Pod db-0 nodeName=n2",
            "status Pod db-0",
            "event db-0 Normal Scheduled: Successfully assigned default/db-0 to n2",
        ]
    );
    let condition = pod_scheduled(&h.pod("db-0"));
    assert_eq!(condition["status"], "True");
    assert!(condition.get("reason").is_none());
}

#[test]
fn the_cache_follows_the_store_between_decisions() {
    let h = Harness::new();
    h.create(&[node("n1", json!({}), "1", "1Gi", "110")]);
    let big = |name: &str| pod(name, "x", json!({}), "800m", "64Mi");
    h.create(&[big("a")]);
    h.start();
    h.drain();
    assert_eq!(h.pod("a")["spec"]["nodeName"], "n1");

    // The second does not fit while the first holds the cpu...
    h.create(&[big("b")]);
    let key_b = ObjectKey::new(Kind::Pod, "default", "b");
    let rv = h.store.current_rv();
    h.watch_from(rv - 1);
    h.drain();
    assert_eq!(
        pod_scheduled(&h.pod("b"))["message"],
        "0/1 nodes are available: 1 Insufficient cpu."
    );

    // ...and fits once the first is gone: the deletion retries the pending pod.
    let rv = h.store.current_rv();
    h.store
        .commit(vec![Op::Delete {
            key: ObjectKey::new(Kind::Pod, "default", "a"),
            expect_rv: None,
        }])
        .unwrap();
    h.watch_from(rv);
    assert_eq!(h.queue.try_pop(), Some(key_b.clone()));
    h.queue.done(&key_b, false);
    h.queue.add(key_b);
    h.drain();
    assert_eq!(h.pod("b")["spec"]["nodeName"], "n1");

    // Nodes added after the cache was built are seen.
    h.create(&[plain_node("n2"), pod("c", "x", json!({}), "800m", "64Mi")]);
    h.queue.add(ObjectKey::new(Kind::Pod, "default", "c"));
    h.drain();
    assert_eq!(h.pod("c")["spec"]["nodeName"], "n2");
}

#[test]
fn a_pod_bound_by_someone_else_is_left_alone() {
    let h = Harness::new();
    h.create(&[plain_node("n1"), replica("web", 0)]);
    let key = ObjectKey::new(Kind::Pod, "default", "web-0");
    let mut taken = h.pod("web-0");
    taken["spec"]["nodeName"] = json!("n1");
    h.store
        .commit(vec![Op::Put {
            object: taken,
            expect_rv: None,
        }])
        .unwrap();
    h.queue.add(key);
    h.drain();
    assert!(h.lines().is_empty(), "a bound pod is left alone");
}

#[test]
fn node_events_retry_only_pending_pods_and_only_on_changes_that_matter() {
    let h = Harness::new();
    h.create(&[plain_node("n1"), replica("web", 0)]);
    let pending_event = |object: Value| tend::store::WatchEvent {
        event_type: tend::store::WatchEventType::Added,
        object,
        resource_version: 1,
    };
    let waiting = replica("late", 0);
    assert_eq!(
        h.scheduler.keys_for(&pending_event(waiting)),
        [ObjectKey::new(Kind::Pod, "default", "late-0")]
    );
    let new_node = pending_event(plain_node("n9"));
    assert_eq!(
        h.scheduler.keys_for(&new_node),
        [ObjectKey::new(Kind::Pod, "default", "late-0")]
    );
    assert!(
        h.scheduler.keys_for(&new_node).is_empty(),
        "the same node again"
    );
    let mut not_ready = plain_node("n9");
    not_ready["status"]["conditions"][0]["status"] = json!("False");
    assert_eq!(h.scheduler.keys_for(&pending_event(not_ready)).len(), 1);
    let bound = bound_to(replica("late", 0), "n1");
    assert!(h.scheduler.keys_for(&pending_event(bound)).is_empty());
    let mut relabelled = plain_node("n9");
    relabelled["metadata"]["labels"] = json!({"disk": "ssd"});
    assert!(
        h.scheduler.keys_for(&pending_event(relabelled)).is_empty(),
        "no pod is pending any more"
    );
}

/// A store where someone changes a pod just before the scheduler's first write to it.
struct RacingStore {
    inner: Arc<MemoryStore>,
    raced: std::sync::atomic::AtomicBool,
}

impl Store for RacingStore {
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
        if let Some(Op::Put { object, .. }) = ops.first()
            && object["kind"] == "Pod"
            && !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let mut changed = self.inner.get(&ObjectKey::of(object).unwrap())?.unwrap();
            changed["metadata"]["labels"] = json!({"touched": "yes"});
            self.inner.commit(vec![Op::Put {
                object: changed,
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
fn a_bind_that_loses_a_race_is_retried_on_the_latest_pod() {
    let inner = Arc::new(MemoryStore::new());
    let store = Arc::new(RacingStore {
        inner: inner.clone(),
        raced: false.into(),
    });
    let ctx = Context::new(
        store,
        Arc::new(FakeClock::new("2026-03-01T10:00:00Z".parse().unwrap())),
    );
    inner
        .commit(vec![
            Op::Create(plain_node("n1")),
            Op::Create(replica("web", 0)),
        ])
        .unwrap();
    let scheduler = Scheduler::new();
    let key = ObjectKey::new(Kind::Pod, "default", "web-0");
    assert!(matches!(
        scheduler.reconcile(&key, &ctx),
        Err(tend::controller::runtime::ReconcileError::Conflict(_))
    ));
    let queue = WorkQueue::new();
    queue.add(key.clone());
    runtime::drain(&scheduler, &ctx, &queue, 10);
    let pod = inner.get(&key).unwrap().unwrap();
    assert_eq!(pod["spec"]["nodeName"], "n1");
    assert_eq!(
        pod["metadata"]["labels"]["touched"], "yes",
        "the other write is kept"
    );
}
