//! The etcd store against a real etcd (each test starts its own, tests/support/etcd.rs): two
//! stores on one etcd see each other's writes and conflicts, an etcd restart and a compaction
//! behind a watch's back are survived, and `tend serve --store etcd://` keeps its objects in
//! etcd. The store contract itself runs on etcd in tests/store.rs.

mod common;
#[path = "support/etcd.rs"]
mod etcd_support;

use common::*;
use etcd_support::{Etcd, Proxy};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tend::api::{Kind, ObjectKey, ObjectMeta};
use tend::store::etcd::EtcdStore;
use tend::store::watch::WatchLimits;
use tend::store::{Op, Store, StoreError, Watch, WatchEvent};

fn deployment(name: &str, replicas: u64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    })
}

fn put(object: Value) -> Op {
    Op::Put {
        object,
        expect_rv: None,
    }
}

fn web() -> ObjectKey {
    ObjectKey::new(Kind::Deployment, "default", "web")
}

fn open(url: &str) -> EtcdStore {
    EtcdStore::open_with(url, "/tend/", WatchLimits::default()).expect("open")
}

/// The next event of `watch`, waiting at most 10 s.
fn next_event(
    runtime: &tokio::runtime::Runtime,
    watch: &mut Watch,
) -> Result<WatchEvent, StoreError> {
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an event within 10 s")
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn replicas(event: &WatchEvent) -> u64 {
    event.object["spec"]["replicas"].as_u64().expect("replicas")
}

#[test]
fn two_stores_see_each_others_writes() {
    let Some(etcd) = Etcd::start("two_stores_see_each_others_writes") else {
        return;
    };
    let (a, b) = (open(&etcd.url()), open(&etcd.url()));
    let rt = runtime();
    let mut a_watch = a.watch(a.current_rv()).expect("watch a");
    let mut b_watch = b.watch(b.current_rv()).expect("watch b");

    let by_b = b.commit(vec![put(deployment("web", 1))]).expect("b writes");
    let seen = next_event(&rt, &mut a_watch).expect("a sees b's write");
    assert_eq!(seen.resource_version, by_b.resource_version);
    assert_eq!(seen.object, by_b.objects[0]);
    let read = a.get(&web()).expect("get").expect("present");
    assert_eq!(read.resource_version(), by_b.resource_version);
    assert_eq!(a.current_rv(), by_b.resource_version);

    let by_a = a.commit(vec![put(deployment("web", 2))]).expect("a writes");
    assert!(by_a.resource_version > by_b.resource_version);
    assert_eq!(by_a.objects[0]["metadata"]["generation"], 2);
    assert_eq!(
        by_a.objects[0]["metadata"]["uid"],
        by_b.objects[0]["metadata"]["uid"]
    );
    let first = next_event(&rt, &mut b_watch).expect("b sees its own write");
    let second = next_event(&rt, &mut b_watch).expect("b sees a's write");
    assert_eq!(
        (first.resource_version, second.resource_version),
        (by_b.resource_version, by_a.resource_version)
    );
    assert_eq!(replicas(&second), 2);
    let (listed, rv) = b.list(Kind::Deployment, None).expect("list");
    assert_eq!(listed, by_a.objects);
    assert!(rv >= by_a.resource_version);
}

#[test]
fn writers_on_two_stores_conflict_and_lose_no_update() {
    let Some(etcd) = Etcd::start("writers_on_two_stores_conflict_and_lose_no_update") else {
        return;
    };
    let stores = [Arc::new(open(&etcd.url())), Arc::new(open(&etcd.url()))];
    let created = stores[0]
        .commit(vec![put(deployment("web", 0))])
        .expect("create");
    let rv = created.resource_version;

    // Both read rv; the first write wins, the second is told whose change it would undo.
    let update = |replicas| Op::Put {
        object: deployment("web", replicas),
        expect_rv: Some(rv),
    };
    let won = stores[0].commit(vec![update(1)]).expect("first writer");
    let lost = stores[1].commit(vec![update(2)]);
    match lost {
        Err(StoreError::Conflict {
            expected, found, ..
        }) => assert_eq!((expected, found), (rv, won.resource_version)),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Unguarded writers racing on one key from both stores: each write is applied to the
    // latest object (a raced etcd transaction is read and applied again), so every spec change
    // bumps the generation once.
    const PER_THREAD: u64 = 15;
    std::thread::scope(|scope| {
        for (t, store) in [0, 1, 2, 3].into_iter().zip(stores.iter().cycle()) {
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    store
                        .commit(vec![put(deployment("web", 1000 * (t + 1) + i))])
                        .expect("unguarded put");
                }
            });
        }
    });
    let last = stores[1].get(&web()).expect("get").expect("present");
    assert_eq!(last["metadata"]["generation"], 2 + 4 * PER_THREAD);
    assert_eq!(
        last["metadata"]["uid"],
        created.objects[0]["metadata"]["uid"]
    );
}

#[test]
fn an_etcd_restart_is_survived() {
    let Some(mut etcd) = Etcd::start("an_etcd_restart_is_survived") else {
        return;
    };
    let store = open(&etcd.url());
    let rt = runtime();
    let mut watch = store.watch(store.current_rv()).expect("watch");
    let before = store
        .commit(vec![put(deployment("web", 1))])
        .expect("before");

    etcd.kill(); // SIGKILL
    let started = Instant::now();
    let failed = store.get(&web());
    let get_took = started.elapsed();
    let failed_commit = store.commit(vec![put(deployment("web", 99))]);
    let commit_took = started.elapsed() - get_took;
    for (what, result) in [
        ("get", failed.map(drop)),
        ("commit", failed_commit.map(drop)),
    ] {
        match result {
            Err(StoreError::Backend { path, reason }) => {
                assert_eq!(path, etcd.url(), "{what} names the endpoint");
                eprintln!("{what} while etcd is down: store at {path}: {reason}");
            }
            other => panic!("{what} while etcd is down: {other:?}"),
        }
    }
    // A generous bound: each call has a deadline of a few seconds.
    assert!(
        get_took < Duration::from_secs(15) && commit_took < Duration::from_secs(15),
        "calls hang while etcd is down: get {get_took:?}, commit {commit_took:?}"
    );

    etcd.restart();
    // Another writer gets in first after the restart: the watch must not miss it.
    let other = open(&etcd.url());
    let by_other = other
        .commit(vec![put(deployment("web", 2))])
        .expect("other writes after the restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match store.commit(vec![put(deployment("web", 3))]) {
            Ok(committed) => break committed,
            Err(e) if Instant::now() < deadline => {
                eprintln!("after the restart: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the store does not work again after etcd's restart: {e}"),
        }
    };
    let got: Vec<(u64, u64)> = (0..3)
        .map(|_| {
            let event = next_event(&rt, &mut watch).expect("event");
            (event.resource_version, replicas(&event))
        })
        .collect();
    assert_eq!(
        got,
        [
            (before.resource_version, 1),
            (by_other.resource_version, 2),
            (after.resource_version, 3)
        ],
        "the watch resumes without losing or repeating events"
    );
    assert_eq!(
        store.get(&web()).expect("get").expect("present")["spec"]["replicas"],
        3
    );
}

#[test]
fn a_compaction_behind_a_watch_is_gone_then_relisted() {
    let Some(etcd) = Etcd::start("a_compaction_behind_a_watch_is_gone_then_relisted") else {
        return;
    };
    let proxy = Proxy::start(&etcd);
    let store = open(&proxy.url());
    let direct = open(&etcd.url());
    let rt = runtime();
    let first = store
        .commit(vec![put(deployment("web", 1))])
        .expect("first");
    let mut watch = store.watch(first.resource_version).expect("watch");

    // The store loses etcd; meanwhile others write and etcd compacts their history away.
    proxy.cut();
    let mut last = first.resource_version;
    for replicas in 2..=4 {
        last = direct
            .commit(vec![put(deployment("web", replicas))])
            .expect("direct write")
            .resource_version;
    }
    etcd.etcdctl(&["compact", &last.to_string()]);
    proxy.restore();

    // The changes in between cannot be told: the watcher must list again.
    match next_event(&rt, &mut watch) {
        Err(StoreError::Gone { .. }) => {}
        other => panic!("expected Gone after the compaction, got {other:?}"),
    }
    assert!(matches!(
        store.watch(first.resource_version),
        Err(StoreError::Gone { .. })
    ));
    let (listed, rv) = store.list(Kind::Deployment, None).expect("relist");
    assert_eq!(listed[0]["spec"]["replicas"], 4);
    let mut rewatch = store.watch(rv).expect("watch from the list");
    let next = direct
        .commit(vec![put(deployment("web", 5))])
        .expect("next write");
    let event = next_event(&rt, &mut rewatch).expect("event after relisting");
    assert_eq!(
        (event.resource_version, replicas(&event)),
        (next.resource_version, 5)
    );
}

#[test]
fn bad_store_urls_fail_with_one_line() {
    let state = tempfile::tempdir().expect("tempdir");
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let nothing_there = format!("etcd://127.0.0.1:{free}");
    // Accepts connections (in the kernel's backlog) and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = format!("etcd://{}", listener.local_addr().expect("addr"));
    for (store, says) in [
        (silent.as_str(), "no answer within"),
        ("etcd://no-port", "etcd://HOST:PORT"),
        ("etcd://a:1,,b:2", "etcd://HOST:PORT"),
        ("postgres://x:1", "expected redb or etcd://"),
        (nothing_there.as_str(), nothing_there.as_str()),
    ] {
        let started = Instant::now();
        let out = Command::new(TEND)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--repo",
                "/nonexistent",
                "--store",
                store,
                "--state",
            ])
            .arg(state.path())
            .output()
            .expect("run tend serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{store}: {stderr}");
        assert!(stderr.contains(says), "{store}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{store}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{store}: took {:?}",
            started.elapsed()
        );
    }
}

const WEB_SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n";

#[test]
fn serve_keeps_its_objects_in_etcd() {
    let Some(etcd) = Etcd::start("serve_keeps_its_objects_in_etcd") else {
        return;
    };
    let repos = Repos::new();
    repos.write("web.yaml", WEB_SVC);
    let first = repos.commit("web service");
    repos.push();
    let bare = repos.bare.to_str().expect("utf-8 path");
    let url = etcd.url();
    let serve = Serve::start(&["--repo", bare, "--store", &url], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");
    let svc = serve.get_ok("/api/v1/namespaces/default/services/web");
    let keys = etcd.etcdctl(&["get", "--prefix", "/tend/", "--keys-only"]);
    assert!(keys.contains("/tend/Service/default/web"), "{keys}");
    assert!(keys.contains(&format!("/tend/Revision/{first}")), "{keys}");
    // The object's resourceVersion is etcd's mod revision of its key.
    let fields = etcd.etcdctl(&["get", "/tend/Service/default/web", "-w", "fields"]);
    let mod_revision = fields
        .lines()
        .find_map(|l| l.strip_prefix("\"ModRevision\" : "))
        .expect("ModRevision");
    assert_eq!(svc.meta_str("resourceVersion"), Some(mod_revision.trim()));
    serve.kill();

    // A control plane with a fresh state directory on the same etcd serves the same objects.
    let state = tempfile::tempdir().expect("tempdir");
    let again = Serve::start(&["--repo", bare, "--store", &url], state.path());
    std::thread::sleep(Duration::from_millis(500));
    let after = again.get_ok("/api/v1/namespaces/default/services/web");
    assert_eq!(after["metadata"]["uid"], svc["metadata"]["uid"]);
    assert_eq!(after["spec"]["clusterIP"], svc["spec"]["clusterIP"]);
    assert_eq!(
        phase(&again.get_ok(&format!("/apis/tend.dev/v1/revisions/{first}"))),
        "Applied"
    );
}

#[test]
fn a_resource_version_from_a_newer_history_is_gone() {
    let Some(etcd) = Etcd::start("a_resource_version_from_a_newer_history_is_gone") else {
        return;
    };
    let store = open(&etcd.url());
    let committed = store
        .commit(vec![put(deployment("web", 1))])
        .expect("commit");
    // What a client kept from before etcd was restored from an older backup.
    let future = committed.resource_version + 1000;
    match store.watch(future) {
        Err(StoreError::Gone { requested, oldest }) => {
            assert_eq!((requested, oldest), (future, committed.resource_version))
        }
        other => panic!("expected Gone, got {:?}", other.map(|_| "a watch")),
    }
    // A revision another store wrote but this one's feed has not brought yet is no such case.
    let other = open(&etcd.url());
    let newer = other
        .commit(vec![put(deployment("web", 2))])
        .expect("other commit");
    let mut watch = store.watch(newer.resource_version).expect("watch");
    let next = other
        .commit(vec![put(deployment("web", 3))])
        .expect("next commit");
    let event = next_event(&runtime(), &mut watch).expect("event");
    assert_eq!(event.resource_version, next.resource_version);
}
