//! End to end, issue 5 part 1: Endpoints follow a Deployment's pods over a real `tend serve`,
//! real git, the CLI and simulated nodes.

mod common;

use common::*;
use serde_json::Value;

const EP: &str = "/api/v1/namespaces/default/endpoints/web";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: web:v1\n        ports:\n        - name: http\n          containerPort: 8080\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n";

/// A Service without a selector and the Endpoints given for it.
const DB: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  ports:\n  - port: 5432\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: db\nsubsets:\n- addresses:\n  - ip: 192.168.1.20\n  ports:\n  - port: 5432\n";

/// Ready addresses as `ip:port`, sorted, over all subsets.
fn ready(ep: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for s in ep["subsets"].as_array().into_iter().flatten() {
        for a in s["addresses"].as_array().into_iter().flatten() {
            for p in s["ports"].as_array().into_iter().flatten() {
                out.push(format!("{}:{}", a["ip"].as_str().unwrap_or("?"), p["port"]));
            }
        }
    }
    out.sort();
    out
}

fn slice_endpoints(serve: &Serve) -> usize {
    items(&serve.get_ok(SLICES))
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
        .map(|s| {
            s["endpoints"].as_array().map_or(0, |e| {
                e.iter()
                    .filter(|e| e["conditions"]["ready"] == true)
                    .count()
            })
        })
        .sum()
}

fn wait_addresses(serve: &Serve, n: usize) -> Value {
    let ep = serve.wait_for(EP, &format!("{n} ready addresses"), |ep| {
        ready(ep).len() == n
    });
    serve.wait_for(SLICES, &format!("{n} ready slice endpoints"), |_| {
        slice_endpoints(serve) == n
    });
    ep
}

#[test]
fn endpoints_follow_scaling_and_go_with_the_service() {
    let repos = Repos::new();
    repos.write("web.yaml", &deployment(3));
    repos.write("web-svc.yaml", SERVICE);
    repos.write("db.yaml", DB);
    let v1 = repos.commit("web and its service");
    let serve = Serve::start(&["--repo", repos.work.to_str().unwrap()], &repos.state());
    let _nodes: Vec<SimNode> = ["node01", "node02"]
        .iter()
        .map(|n| SimNode::start(&serve, n, ""))
        .collect();
    assert_eq!(phase(&serve.wait_revision(&v1)), "Applied");

    let ep = wait_addresses(&serve, 3);
    let addrs = ready(&ep);
    assert!(
        addrs
            .iter()
            .all(|a| a.starts_with("10.244.") && a.ends_with(":8080")),
        "the named targetPort resolves to the container port: {addrs:?}"
    );
    let first = &ep["subsets"][0]["addresses"][0];
    assert_eq!(first["targetRef"]["kind"], "Pod");
    assert!(
        first["nodeName"]
            .as_str()
            .is_some_and(|n| n.starts_with("node0"))
    );

    // The selectorless Service keeps the Endpoints from the source, mirrored into a slice.
    let db = serve.get_ok("/api/v1/namespaces/default/endpoints/db");
    assert_eq!(ready(&db), ["192.168.1.20:5432"]);
    let mirrored = serve.wait_for(SLICES, "the mirrored slice", |l| {
        items(l)
            .iter()
            .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "db")
    });
    let mirrored = items(&mirrored)
        .into_iter()
        .find(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "db")
        .unwrap();
    assert_eq!(mirrored["endpoints"][0]["addresses"][0], "192.168.1.20");

    // A node (its own credential, registered with the join token) lists and watches
    // Endpoints and EndpointSlices of all namespaces.
    let join = std::fs::read_to_string(serve.state.join("join.token")).unwrap();
    let http = reqwest::blocking::Client::new();
    let registered: serde_json::Value = http
        .post(format!("{}/apis/tend.dev/v1/noderegistrations", serve.url))
        .bearer_auth(join.trim())
        .json(&serde_json::json!({"name": "ep-reader"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let credential = registered["credential"].as_str().unwrap().to_string();
    for path in [
        "/api/v1/endpoints",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/endpoints?watch=true",
        "/apis/discovery.k8s.io/v1/endpointslices?watch=true",
    ] {
        let resp = http
            .get(format!("{}{path}", serve.url))
            .bearer_auth(&credential)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "GET {path} as a node");
    }

    // `tend get ep` prints kubectl's columns.
    let out = serve.cli_ok(&["get", "ep"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "ENDPOINTS", "AGE"]);
    let row = lines
        .find(|l| l.starts_with("web "))
        .expect("a row for web");
    assert!(row.contains(":8080,") && row.contains("10.244."), "{row}");

    serve.cli_ok(&["scale", "deployment/web", "--replicas", "5"]);
    wait_addresses(&serve, 5);
    let out = serve.cli_ok(&["get", "endpoints", "web"]);
    assert!(out.contains("+ 2 more..."), "{out}");

    serve.cli_ok(&["scale", "deployment/web", "--replicas", "2"]);
    wait_addresses(&serve, 2);

    repos.remove("web-svc.yaml");
    let gone = repos.commit("no service");
    assert_eq!(phase(&serve.wait_revision(&gone)), "Applied");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while serve.get(EP).0 != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the Endpoints stayed: {}",
            serve.get(EP).1
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    serve.wait_for(SLICES, "web's slices gone", |l| {
        items(l)
            .iter()
            .all(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] != "web")
    });
    // The source's Endpoints go when their file goes.
    repos.remove("db.yaml");
    let pruned = repos.commit("no db");
    assert_eq!(phase(&serve.wait_revision(&pruned)), "Applied");
    assert_eq!(serve.get("/api/v1/namespaces/default/endpoints/db").0, 404);
    serve.wait_for(SLICES, "all slices gone", |l| items(l).is_empty());
}
