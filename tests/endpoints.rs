//! The endpoints controller against a store fed by hand: ordered writes (`RecordingStore`),
//! watch events turned into keys as the controller loop does, `drain` to reconcile.

use serde_json::{Value, json};
use std::sync::Arc;
use tend::api::{Kind, ObjectKey, ObjectMeta};
use tend::controller::endpoints::{EndpointsController, SERVICE_NAME_LABEL};
use tend::controller::gc::GarbageCollector;
use tend::controller::runtime::{Context, FakeClock, Reconciler, WorkQueue, drain};
use tend::store::memory::MemoryStore;
use tend::store::recording::RecordingStore;
use tend::store::{Op, Store, Watch};

struct Harness {
    store: Arc<RecordingStore>,
    ctx: Context,
    controller: EndpointsController,
    watch: Watch,
}

impl Harness {
    fn new() -> Harness {
        let store = Arc::new(RecordingStore::new(Arc::new(MemoryStore::new())));
        let clock = Arc::new(FakeClock::new(
            "2026-03-01T12:00:00Z".parse().expect("time"),
        ));
        let ctx = Context::new(store.clone(), clock);
        let watch = store.watch(store.current_rv()).expect("watch");
        Harness {
            store,
            ctx,
            controller: EndpointsController::new(),
            watch,
        }
    }

    /// Feeds every change since the last call to `rec` and reconciles the keys it derives,
    /// until the store is quiet (the controller's own writes are events too).
    fn settle_with(&mut self, recs: &[&dyn Reconciler]) {
        for _ in 0..10 {
            let mut events = Vec::new();
            while let Some(e) = self.watch.try_next().expect("watch") {
                events.push(e);
            }
            if events.is_empty() {
                return;
            }
            for rec in recs {
                let queue = WorkQueue::default();
                for e in &events {
                    rec.keys_for(e).into_iter().for_each(|k| queue.add(k));
                }
                drain(*rec, &self.ctx, &queue, 1000);
            }
        }
        panic!("the controllers did not settle");
    }

    fn settle(&mut self) {
        let controller = std::mem::take(&mut self.controller);
        self.settle_with(&[&controller]);
        self.controller = controller;
    }

    /// The controller's writes since the last call, as short lines.
    fn writes(&self) -> Vec<String> {
        self.store.take_lines()
    }

    fn commit(&self, op: Op) {
        self.store.commit(vec![op]).expect("commit");
        self.store.take();
    }

    fn put(&self, object: Value) {
        self.commit(Op::Put {
            object,
            expect_rv: None,
        });
    }

    fn put_status(&self, name: &str, status: Value) {
        self.commit(Op::PutStatus {
            key: ObjectKey::new(Kind::Pod, "default", name),
            status,
            expect_rv: None,
        });
    }

    fn delete(&self, kind: Kind, name: &str) {
        self.commit(Op::Delete {
            key: ObjectKey::new(kind, "default", name),
            expect_rv: None,
        });
    }

    fn endpoints(&self, name: &str) -> Option<Value> {
        self.store
            .get(&ObjectKey::new(Kind::Endpoints, "default", name))
            .expect("get")
    }

    /// (ready, not ready) IPs of the Endpoints `name`, over all subsets, sorted.
    fn addresses(&self, name: &str) -> (Vec<String>, Vec<String>) {
        let ep = self.endpoints(name).expect("endpoints exist");
        let collect = |field: &str| {
            let mut v: Vec<String> = ep["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s.get(field).and_then(Value::as_array).cloned())
                .flatten()
                .map(|a| a["ip"].as_str().unwrap_or("?").to_string())
                .collect();
            v.sort();
            v
        };
        (collect("addresses"), collect("notReadyAddresses"))
    }

    fn slices(&self, service: &str) -> Vec<Value> {
        self.store
            .list(Kind::EndpointSlice, Some("default"))
            .expect("list")
            .0
            .into_iter()
            .filter(|s| {
                s.labels()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .and_then(Value::as_str)
                    == Some(service)
            })
            .collect()
    }
}

fn service(name: &str, selector: Option<Value>) -> Value {
    let mut spec = json!({"clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]});
    if let Some(sel) = selector {
        spec["selector"] = sel;
    }
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": spec})
}

fn pod(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"nodeName": "node01",
            "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]}})
}

fn running(ip: &str, ready: bool) -> Value {
    json!({"phase": "Running", "podIP": ip,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]})
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn follows_pods_and_writes_only_on_change() {
    let mut h = Harness::new();
    h.put(service("web", Some(json!({"app": "web"}))));
    h.settle();
    let writes = h.writes();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(writes[0], "create Endpoints web");
    assert!(
        writes[1].starts_with("create EndpointSlice web-"),
        "{writes:?}"
    );
    assert_eq!(h.addresses("web"), (vec![], vec![]));

    // Pods appear without an IP: nothing to write.
    h.put(pod("web-a", "web"));
    h.put(pod("web-b", "web"));
    h.put(pod("db-a", "db"));
    h.settle();
    assert_eq!(h.writes(), Vec::<String>::new());

    // They get IPs, not ready yet.
    h.put_status("web-a", running("10.244.0.2", false));
    h.put_status("web-b", running("10.244.1.2", false));
    h.put_status("db-a", running("10.244.1.3", true));
    h.settle();
    let writes = h.writes();
    assert!(
        writes.contains(&"put Endpoints web".to_string()),
        "{writes:?}"
    );
    assert_eq!(
        h.addresses("web"),
        (vec![], strings(&["10.244.0.2", "10.244.1.2"]))
    );

    // Ready.
    h.put_status("web-a", running("10.244.0.2", true));
    h.put_status("web-b", running("10.244.1.2", true));
    h.settle();
    assert_eq!(
        h.addresses("web"),
        (strings(&["10.244.0.2", "10.244.1.2"]), vec![])
    );
    h.writes();

    // A status write that changes nothing the endpoints show: no write.
    let mut same = running("10.244.0.2", true);
    same["startTime"] = json!("2026-03-01T12:00:00Z");
    h.put_status("web-a", same);
    h.settle();
    assert_eq!(h.writes(), Vec::<String>::new());

    // A failed readiness probe: out of the ready addresses at once.
    h.put_status("web-b", running("10.244.1.2", false));
    h.settle();
    assert_eq!(
        h.addresses("web"),
        (strings(&["10.244.0.2"]), strings(&["10.244.1.2"]))
    );
    let slice = &h.slices("web")[0];
    let b = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["addresses"][0] == "10.244.1.2")
        .cloned()
        .expect("b in the slice");
    assert_eq!(b["conditions"]["ready"], false);
    h.writes();

    // Terminating: out of the Endpoints.
    let mut leaving = h
        .store
        .get(&ObjectKey::new(Kind::Pod, "default", "web-a"))
        .unwrap()
        .unwrap();
    leaving["metadata"]["deletionTimestamp"] = json!("2026-03-01T12:01:00Z");
    h.put(leaving);
    h.settle();
    assert_eq!(h.addresses("web"), (vec![], strings(&["10.244.1.2"])));

    // Relabelled away: gone from the Service it matched before.
    let mut relabelled = h
        .store
        .get(&ObjectKey::new(Kind::Pod, "default", "web-b"))
        .unwrap()
        .unwrap();
    relabelled["metadata"]["labels"]["app"] = json!("other");
    h.put(relabelled);
    h.settle();
    assert_eq!(h.addresses("web"), (vec![], vec![]));

    // Deleted pods, and the controller's memory rebuilt from the store, change nothing more.
    h.delete(Kind::Pod, "web-a");
    h.settle();
    h.writes();
    let again = EndpointsController::new();
    let queue = WorkQueue::default();
    again
        .initial_keys(&h.ctx)
        .unwrap()
        .into_iter()
        .for_each(|k| queue.add(k));
    drain(&again, &h.ctx, &queue, 100);
    assert_eq!(h.writes(), Vec::<String>::new(), "a restart writes nothing");
}

#[test]
fn a_deleted_service_takes_its_endpoints_and_slices() {
    let mut h = Harness::new();
    h.put(service("web", Some(json!({"app": "web"}))));
    h.put(pod("web-a", "web"));
    h.put_status("web-a", running("10.244.0.2", true));
    let gc = GarbageCollector::new();
    let controller = std::mem::take(&mut h.controller);
    h.settle_with(&[&controller, &gc]);
    assert_eq!(h.addresses("web"), (strings(&["10.244.0.2"]), vec![]));
    assert_eq!(h.slices("web").len(), 1);
    h.writes();

    h.delete(Kind::Service, "web");
    h.settle_with(&[&controller, &gc]);
    assert_eq!(h.endpoints("web"), None);
    assert_eq!(h.slices("web"), Vec::<Value>::new());
    let mut writes = h.writes();
    writes.sort();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(
        writes[0].starts_with("delete EndpointSlice web-"),
        "{writes:?}"
    );
    assert_eq!(writes[1], "delete Endpoints web");
}

#[test]
fn selectorless_services_keep_the_endpoints_they_were_given() {
    let mut h = Harness::new();
    h.put(service("db", None));
    let given = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "db", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "192.168.1.20"}],
            "ports": [{"name": "http", "port": 5432, "protocol": "TCP"}]}]});
    h.put(given.clone());
    h.put(pod("db-a", "db"));
    h.put_status("db-a", running("10.244.0.9", true));
    h.settle();
    let writes = h.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(
        writes[0].starts_with("create EndpointSlice db-"),
        "only a mirrored slice: {writes:?}"
    );
    assert_eq!(h.addresses("db"), (strings(&["192.168.1.20"]), vec![]));
    let slices = h.slices("db");
    assert_eq!(slices[0]["endpoints"][0]["addresses"][0], "192.168.1.20");

    // The given Endpoints change: the slice follows, the Endpoints stay as given.
    let mut changed = given;
    changed["subsets"][0]["addresses"] = json!([{"ip": "192.168.1.21"}]);
    h.put(changed);
    h.settle();
    let writes = h.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].starts_with("put EndpointSlice db-"));
    assert_eq!(
        h.slices("db")[0]["endpoints"][0]["addresses"][0],
        "192.168.1.21"
    );

    // A selector added later: the controller takes over.
    h.put(service("db", Some(json!({"app": "db"}))));
    h.settle();
    assert_eq!(h.addresses("db"), (strings(&["10.244.0.9"]), vec![]));
}

#[test]
fn external_name_services_get_none_and_lose_ours() {
    let mut h = Harness::new();
    h.put(service("web", Some(json!({"app": "web"}))));
    h.settle();
    assert!(h.endpoints("web").is_some());
    h.writes();
    let mut external = service("web", Some(json!({"app": "web"})));
    external["spec"] = json!({"type": "ExternalName", "externalName": "example.com"});
    h.put(external);
    h.settle();
    assert_eq!(h.endpoints("web"), None);
    assert_eq!(h.slices("web"), Vec::<Value>::new());
}

#[test]
fn endpoints_deleted_by_hand_come_back() {
    let mut h = Harness::new();
    h.put(service("web", Some(json!({"app": "web"}))));
    h.put(pod("web-a", "web"));
    h.put_status("web-a", running("10.244.0.2", true));
    h.settle();
    h.writes();
    h.delete(Kind::Endpoints, "web");
    h.settle();
    assert_eq!(h.writes(), ["create Endpoints web"]);
    assert_eq!(h.addresses("web"), (strings(&["10.244.0.2"]), vec![]));
}
