//! Bytes -> the server's handling of request bodies on the write endpoints, called directly
//! (no HTTP): the first byte picks the endpoint, the rest is the body. Pod status (PUT
//! .../pods/{name}/status), Events (POST), objects (POST, PUT, DELETE), and the rollout
//! commands (scale, pause, resume, rollback) up to the edit of the manifest they commit.
//! Every outcome must be a response (Ok or an ApiError), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use tend::api::{Kind, ObjectKey};
use tend::manifest::edit::apply_edit;
use tend::server::{objects, rollout};
use tend::store::Store;
use tend::store::memory::MemoryStore;

const POD: &str = r#"{"metadata":{"name":"p","namespace":"default"},"spec":{"containers":[{"name":"c","image":"web:v1"}]}}"#;

const DEPLOYMENT_FILE: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: web:v1\n";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fn replica_set(revision: &str) -> Value {
    serde_json::json!({
        "metadata": {"name": format!("web-{revision}"), "namespace": "default",
            "annotations": {"deployment.kubernetes.io/revision": revision,
                "kubernetes.io/change-cause": "abc1234 v"},
            "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "u", "controller": true}]},
        "spec": {"template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": format!("web:v{revision}")}]}}}
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let pod = ObjectKey::new(Kind::Pod, "default", "p");
    runtime().block_on(async {
        let _ = objects::create(&store, Kind::Pod, "default", POD.as_bytes()).await;
        match which % 8 {
            0 => {
                let _ = objects::replace_status(&store, pod, body).await;
            }
            1 => {
                let _ = objects::record_event(&store, "default", body).await;
            }
            2 => {
                let _ = objects::create(&store, Kind::Deployment, "default", body).await;
            }
            3 => {
                let _ = objects::replace(&store, pod, body).await;
            }
            4 => {
                let _ = objects::delete(&store, pod, body).await;
            }
            5 => {
                let _ = objects::prepare_object(Kind::Node, "", Some("n"), body);
            }
            _ => {
                let Ok(json) = serde_json::from_slice::<Value>(body) else {
                    return;
                };
                let action = ["scale", "pause", "resume", "rollback"][usize::from(which / 8) % 4];
                let sets = [replica_set("1"), replica_set("2")];
                let owned: Vec<&Value> = sets.iter().collect();
                if let Ok((edit, message)) = rollout::plan_command(action, "web", &json, &owned) {
                    assert!(!message.contains('\n'), "{message}");
                    let key = ObjectKey::new(Kind::Deployment, "default", "web");
                    let _ = apply_edit(DEPLOYMENT_FILE, &key, &edit);
                }
            }
        }
    });
});
