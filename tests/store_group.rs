//! The redb store's group commit: transactions committed at once from many threads each get
//! their own resourceVersion and their own outcome (a conflicting one fails alone), the watch
//! log receives them in resourceVersion order, and all are on disk after a reopen.

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use tend::api::{Kind, ObjectKey};
use tend::store::redb::RedbStore;
use tend::store::{Op, Store};

const THREADS: usize = 16;
const WRITES: usize = 20;

fn pod(name: &str, value: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"containers": [{"name": "c", "image": format!("x:{value}")}]}})
}

#[test]
fn concurrent_transactions_keep_their_own_version_and_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("group.redb");
    let store = Arc::new(RedbStore::open(&path).expect("open"));
    let start = store.current_rv();
    let mut watch = store.watch(start).expect("watch");
    let results: Vec<Vec<(String, Result<u64, String>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = Arc::clone(&store);
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for w in 0..WRITES {
                        let name = format!("p-{t}-{w}");
                        // Every third write expects a version that cannot be: a conflict.
                        let ops = if w % 3 == 2 {
                            vec![
                                Op::Put {
                                    object: pod(&name, w),
                                    expect_rv: None,
                                },
                                Op::Put {
                                    object: pod(&format!("p-{t}-0"), w),
                                    expect_rv: Some(u64::MAX - 1),
                                },
                            ]
                        } else {
                            vec![Op::Put {
                                object: pod(&name, w),
                                expect_rv: None,
                            }]
                        };
                        let outcome = store
                            .commit(ops)
                            .map(|c| c.resource_version)
                            .map_err(|e| e.to_string());
                        outcomes.push((name, outcome));
                    }
                    outcomes
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut committed: BTreeMap<u64, String> = BTreeMap::new();
    let mut failed = Vec::new();
    for (name, outcome) in results.into_iter().flatten() {
        match outcome {
            Ok(rv) => {
                assert!(
                    committed.insert(rv, name.clone()).is_none(),
                    "two transactions got resourceVersion {rv}"
                );
            }
            Err(e) => failed.push((name, e)),
        }
    }
    let conflicts = THREADS * (0..WRITES).filter(|w| w % 3 == 2).count();
    assert_eq!(failed.len(), conflicts, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|(_, e)| e.contains("changed by someone else"))
    );
    assert_eq!(committed.len(), THREADS * WRITES - conflicts);
    // Versions are consecutive: a failed transaction took none.
    let versions: Vec<u64> = committed.keys().copied().collect();
    let expected: Vec<u64> = (start + 1..=start + committed.len() as u64).collect();
    assert_eq!(versions, expected);
    assert_eq!(store.current_rv(), *versions.last().expect("some"));
    // The log: one event per successful transaction, in order, naming its object.
    for (rv, name) in &committed {
        let event = watch.try_next().expect("log").expect("an event per commit");
        assert_eq!(event.resource_version, *rv);
        assert_eq!(event.object["metadata"]["name"], json!(name));
    }
    assert!(
        watch.try_next().expect("log").is_none(),
        "no event of a failed one"
    );
    // A failed transaction left nothing, not even its first write.
    for (name, _) in &failed {
        let key = ObjectKey::new(Kind::Pod, "default", name);
        assert!(store.get(&key).expect("get").is_none(), "{name} was kept");
    }
    drop(watch);
    drop(store);
    let reopened = RedbStore::open(&path).expect("reopen");
    assert_eq!(reopened.current_rv(), *versions.last().expect("some"));
    for name in committed.values() {
        let key = ObjectKey::new(Kind::Pod, "default", name);
        assert!(reopened.get(&key).expect("get").is_some(), "{name} lost");
    }
}
