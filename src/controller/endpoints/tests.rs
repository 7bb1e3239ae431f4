use super::*;
use serde_json::json;

fn service(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
            "labels": {"app": "web", "app.kubernetes.io/managed-by": "tend"}},
        "spec": spec})
}

fn web(ports: Value) -> Value {
    service(json!({"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ports": ports}))
}

/// A running pod of `app=web` with `ip`, Ready or not, and container ports.
fn pod(name: &str, ip: &str, ready: bool, container_ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "labels": {"app": "web"}},
        "spec": {"nodeName": "node01", "containers": [{"name": "c", "ports": container_ports}]},
        "status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn ips(subset: &Value, field: &str) -> Vec<String> {
    subset
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect()
}

fn ports(subset: &Value) -> Vec<(String, i64)> {
    subset
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn ready_pods_are_addresses_and_unready_ones_not_ready_addresses() {
    let svc = web(json!([{"port": 80, "targetPort": 8080, "protocol": "TCP"}]));
    let pods = [
        pod("a", "10.244.0.3", true, json!([])),
        pod("b", "10.244.0.2", false, json!([])),
        pod("c", "10.244.1.2", true, json!([])),
    ];
    let (ep, slices) = endpoints_for(&svc, &pods).unwrap();
    let subsets = ep["subsets"].as_array().unwrap();
    assert_eq!(subsets.len(), 1);
    assert_eq!(ips(&subsets[0], "addresses"), ["10.244.0.3", "10.244.1.2"]);
    assert_eq!(ips(&subsets[0], "notReadyAddresses"), ["10.244.0.2"]);
    assert_eq!(ports(&subsets[0]), [(String::new(), 8080)]);
    let a = &subsets[0]["addresses"][0];
    assert_eq!(a["nodeName"], "node01");
    assert_eq!(
        a["targetRef"],
        json!({"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"})
    );
    assert_eq!(ep["metadata"]["name"], "web");
    assert!(ep["metadata"].get("ownerReferences").is_none());
    let labels = &ep["metadata"]["labels"];
    assert_eq!(labels["app"], "web");
    assert_eq!(labels[ENDPOINTS_MANAGED_BY_LABEL], ENDPOINTS_CONTROLLER);
    assert!(
        labels.get(MANAGED_BY_LABEL).is_none(),
        "not marked as from the source"
    );

    assert_eq!(slices.len(), 1);
    let slice = &slices[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    let conds: Vec<(String, bool)> = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap().to_string(),
                e["conditions"]["ready"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        conds,
        [
            ("10.244.0.2".to_string(), false),
            ("10.244.0.3".to_string(), true),
            ("10.244.1.2".to_string(), true)
        ]
    );
    assert_eq!(
        slice["ports"],
        json!([{"name": "", "port": 8080, "protocol": "TCP"}])
    );
}

#[test]
fn pods_without_ip_other_labels_namespaces_or_terminating_are_left_out() {
    let svc = web(json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]));
    let mut no_ip = pod("noip", "", true, json!([]));
    no_ip["status"]
        .as_object_mut()
        .unwrap()
        .remove("podIP")
        .unwrap();
    let mut other = pod("other", "10.244.0.9", true, json!([]));
    other["metadata"]["labels"]["app"] = json!("db");
    let mut elsewhere = pod("elsewhere", "10.244.0.8", true, json!([]));
    elsewhere["metadata"]["namespace"] = json!("prod");
    let mut leaving = pod("leaving", "10.244.0.7", true, json!([]));
    leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let mut done = pod("done", "10.244.0.6", false, json!([]));
    done["spec"]["restartPolicy"] = json!("Never");
    done["status"]["phase"] = json!("Succeeded");
    let pods = [
        no_ip,
        other,
        elsewhere,
        leaving,
        done,
        pod("ok", "10.244.0.5", true, json!([])),
    ];
    let (ep, slices) = endpoints_for(&svc, &pods).unwrap();
    assert_eq!(ips(&ep["subsets"][0], "addresses"), ["10.244.0.5"]);
    assert!(ep["subsets"][0].get("notReadyAddresses").is_none());
    // The slice keeps the terminating pod, not ready and not serving... but marked.
    let eps = slices[0]["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[1]["addresses"][0], "10.244.0.7");
    assert_eq!(
        eps[1]["conditions"],
        json!({"ready": false, "serving": true, "terminating": true})
    );
}

#[test]
fn named_target_ports_are_resolved_per_pod_and_pods_without_the_name_left_out() {
    let svc = web(json!([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]));
    let pods = [
        pod(
            "a",
            "10.244.0.2",
            true,
            json!([{"name": "web", "containerPort": 8080}]),
        ),
        pod(
            "b",
            "10.244.0.3",
            true,
            json!([{"name": "web", "containerPort": 9090}]),
        ),
        pod(
            "c",
            "10.244.0.4",
            true,
            json!([{"name": "other", "containerPort": 7070}]),
        ),
        // Same name, other protocol: no match.
        pod(
            "d",
            "10.244.0.5",
            true,
            json!([{"name": "web", "containerPort": 5353, "protocol": "UDP"}]),
        ),
    ];
    let (ep, slices) = endpoints_for(&svc, &pods).unwrap();
    let subsets = ep["subsets"].as_array().unwrap();
    assert_eq!(subsets.len(), 2, "{subsets:?}");
    let by_port: BTreeMap<i64, Vec<String>> = subsets
        .iter()
        .map(|s| (ports(s)[0].1, ips(s, "addresses")))
        .collect();
    assert_eq!(by_port[&8080], ["10.244.0.2"]);
    assert_eq!(by_port[&9090], ["10.244.0.3"]);
    assert_eq!(slices.len(), 2, "one slice per port set");
    let all: Vec<&Value> = slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap())
        .collect();
    assert_eq!(all.len(), 2, "c and d have no port named web");
}

#[test]
fn multi_port_subsets_are_packed_as_kubernetes_does() {
    let svc = web(json!([
        {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
        {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"}
    ]));
    let pods = [
        pod(
            "a",
            "10.244.0.2",
            true,
            json!([{"name": "web", "containerPort": 8080}]),
        ),
        pod(
            "b",
            "10.244.0.3",
            true,
            json!([{"name": "web", "containerPort": 8080}]),
        ),
        pod("c", "10.244.0.4", false, json!([])),
    ];
    let (ep, _) = endpoints_for(&svc, &pods).unwrap();
    let subsets = ep["subsets"].as_array().unwrap();
    // http:8080 is offered by a and b; metrics:9100 by a, b and (not ready) c: two address
    // sets, so two subsets, each with the ports of its set.
    assert_eq!(subsets.len(), 2, "{subsets:#?}");
    assert_eq!(ports(&subsets[0]), [("http".to_string(), 8080)]);
    assert_eq!(ips(&subsets[0], "addresses"), ["10.244.0.2", "10.244.0.3"]);
    assert_eq!(ports(&subsets[1]), [("metrics".to_string(), 9100)]);
    assert_eq!(ips(&subsets[1], "addresses"), ["10.244.0.2", "10.244.0.3"]);
    assert_eq!(ips(&subsets[1], "notReadyAddresses"), ["10.244.0.4"]);

    // All pods offer both ports: one subset holding both.
    let both = [
        pod(
            "a",
            "10.244.0.2",
            true,
            json!([{"name": "web", "containerPort": 8080}]),
        ),
        pod(
            "b",
            "10.244.0.3",
            true,
            json!([{"name": "web", "containerPort": 8080}]),
        ),
    ];
    let (ep, slices) = endpoints_for(&svc, &both).unwrap();
    assert_eq!(ep["subsets"].as_array().unwrap().len(), 1);
    assert_eq!(
        ports(&ep["subsets"][0]),
        [("http".to_string(), 8080), ("metrics".to_string(), 9100)]
    );
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0]["ports"].as_array().unwrap().len(), 2);
}

#[test]
fn output_does_not_depend_on_pod_order() {
    let svc = web(json!([
        {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
        {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}
    ]));
    let mut pods: Vec<Value> = (0..12)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &format!("10.244.{}.{}", i % 3, 10 + i),
                i % 4 != 0,
                json!([{"name": "web", "containerPort": 8000 + (i % 2)}]),
            )
        })
        .collect();
    let first = endpoints_for(&svc, &pods).unwrap();
    pods.reverse();
    let reversed = endpoints_for(&svc, &pods).unwrap();
    pods.swap(0, 5);
    pods.swap(3, 9);
    let shuffled = endpoints_for(&svc, &pods).unwrap();
    assert_eq!(first, reversed);
    assert_eq!(first, shuffled);
    assert!(unchanged(&first.0, &reversed.0));
}

#[test]
fn headless_services_get_endpoints_even_without_ports() {
    let mut svc = service(json!({"selector": {"app": "web"}, "clusterIP": "None"}));
    let mut p = pod("a", "10.244.0.2", true, json!([]));
    p["spec"]["hostname"] = json!("a");
    p["spec"]["subdomain"] = json!("web");
    let (ep, slices) = endpoints_for(&svc, std::slice::from_ref(&p)).unwrap();
    assert_eq!(ips(&ep["subsets"][0], "addresses"), ["10.244.0.2"]);
    assert!(ep["subsets"][0].get("ports").is_none());
    assert_eq!(ep["subsets"][0]["addresses"][0]["hostname"], "a");
    assert_eq!(ep["metadata"]["labels"][HEADLESS_LABEL], "");
    assert_eq!(slices[0]["endpoints"][0]["addresses"][0], "10.244.0.2");
    assert_eq!(slices[0]["metadata"]["labels"][HEADLESS_LABEL], "");

    svc["spec"]["ports"] = json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]);
    let (ep, _) = endpoints_for(&svc, &[p]).unwrap();
    assert_eq!(ports(&ep["subsets"][0]), [(String::new(), 80)]);
}

#[test]
fn no_selector_and_external_name_get_nothing_from_pods() {
    let pods = [pod("a", "10.244.0.2", true, json!([]))];
    let bare = service(json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}));
    assert_eq!(endpoints_for(&bare, &pods), None);
    let empty_selector = service(json!({"selector": {}, "ports": [{"port": 80}]}));
    assert_eq!(endpoints_for(&empty_selector, &pods), None);
    let external = service(
        json!({"type": "ExternalName", "externalName": "example.com", "selector": {"app": "web"}}),
    );
    assert_eq!(endpoints_for(&external, &pods), None);
    assert_eq!(
        desired(&external, &pods, None),
        Desired {
            endpoints: None,
            slices: vec![]
        }
    );
}

#[test]
fn selectorless_services_mirror_the_given_endpoints_into_slices() {
    let bare = service(json!({"clusterIP": "10.96.0.11", "ports": [{"name": "pg", "port": 5432}]}));
    let given = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "192.168.1.20"}, {"ip": "192.168.1.21"}],
            "notReadyAddresses": [{"ip": "192.168.1.22"}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]});
    let d = desired(&bare, &[], Some(&given));
    assert_eq!(d.endpoints, None, "the given Endpoints are not touched");
    assert_eq!(d.slices.len(), 1);
    let slice = &d.slices[0];
    assert_eq!(
        slice["metadata"]["labels"][SLICE_MANAGED_BY_LABEL],
        SLICE_MIRRORING
    );
    let eps: Vec<(&str, bool)> = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap(),
                e["conditions"]["ready"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("192.168.1.20", true),
            ("192.168.1.21", true),
            ("192.168.1.22", false)
        ]
    );
    assert_eq!(
        slice["ports"],
        json!([{"name": "pg", "port": 5432, "protocol": "TCP"}])
    );
    assert_eq!(desired(&bare, &[], None).slices, Vec::<Value>::new());
}

#[test]
fn a_service_with_no_pods_has_empty_endpoints_and_a_placeholder_slice() {
    let svc = web(json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]));
    let (ep, slices) = endpoints_for(&svc, &[]).unwrap();
    assert_eq!(ep["subsets"], json!([]));
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0]["endpoints"], json!([]));
}

#[test]
fn publish_not_ready_addresses_makes_every_pod_ready() {
    let mut svc = web(json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]));
    svc["spec"]["publishNotReadyAddresses"] = json!(true);
    let (ep, slices) = endpoints_for(&svc, &[pod("a", "10.244.0.2", false, json!([]))]).unwrap();
    assert_eq!(ips(&ep["subsets"][0], "addresses"), ["10.244.0.2"]);
    assert_eq!(slices[0]["endpoints"][0]["conditions"]["ready"], true);
}

#[test]
fn large_groups_are_split_into_slices_of_one_hundred() {
    let svc = web(json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]));
    let pods: Vec<Value> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &format!("10.244.{}.{}", i / 200, i % 200 + 2),
                true,
                json!([]),
            )
        })
        .collect();
    let (_, slices) = endpoints_for(&svc, &pods).unwrap();
    let sizes: Vec<usize> = slices
        .iter()
        .map(|s| s["endpoints"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    let names: BTreeSet<&str> = slices
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
}

#[test]
fn unchanged_ignores_what_the_store_adds() {
    let svc = web(json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]));
    let (ep, _) = endpoints_for(&svc, &[pod("a", "10.244.0.2", true, json!([]))]).unwrap();
    let mut stored = ep.clone();
    stored["metadata"]["uid"] = json!("x");
    stored["metadata"]["resourceVersion"] = json!("7");
    stored["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    assert!(unchanged(&stored, &ep));
    stored["subsets"][0]["addresses"][0]["ip"] = json!("10.244.0.3");
    assert!(!unchanged(&stored, &ep));
}

#[test]
fn pod_changes_endpoints_do_not_show_are_passed_by() {
    let before = pod(
        "a",
        "10.244.0.5",
        true,
        json!([{"name": "http", "containerPort": 80}]),
    );
    let svc = web(json!([{"port": 80, "targetPort": "http"}]));
    // What a status write changes without touching endpoints.
    let mut after = before.clone();
    after["metadata"]["resourceVersion"] = json!("99");
    after["status"]["containerStatuses"] = json!([{"name": "c", "restartCount": 3}]);
    after["status"]["conditions"][0]["lastProbeTime"] = json!("2026-11-22T10:00:00Z");
    assert!(same_for_endpoints(&before, &after));
    assert_eq!(
        endpoints_for(&svc, std::slice::from_ref(&before)),
        endpoints_for(&svc, &[after])
    );
    // Every field endpoints read makes a difference, and the endpoints do differ.
    let changes: [(&str, Value); 9] = [
        ("/status/podIP", json!("10.244.0.6")),
        ("/status/phase", json!("Failed")),
        ("/status/conditions/0/status", json!("False")),
        ("/metadata/labels/app", json!("blog")),
        ("/metadata/uid", json!("uid-other")),
        ("/metadata/deletionTimestamp", json!("2026-11-22T10:00:00Z")),
        ("/spec/nodeName", json!("node02")),
        ("/spec/restartPolicy", json!("Never")),
        ("/spec/containers/0/ports/0/containerPort", json!(8080)),
    ];
    let mut cache = Cache::default();
    cache.set_service(&svc, false);
    assert_eq!(cache.set_pod(&before, false).len(), 1);
    for (pointer, value) in changes {
        let mut changed = before.clone();
        let (parent, field) = pointer.rsplit_once('/').expect("a pointer");
        match changed.pointer_mut(parent).expect(parent) {
            Value::Object(map) => {
                map.insert(field.to_string(), value);
            }
            Value::Array(items) => items[field.parse::<usize>().expect("an index")] = value,
            other => panic!("{parent} is {other}"),
        }
        assert!(!same_for_endpoints(&before, &changed), "{pointer}");
        // The phase and the restart policy only count together (a Failed pod that never restarts).
        if !matches!(pointer, "/spec/restartPolicy" | "/status/phase") {
            assert_ne!(
                endpoints_for(&svc, std::slice::from_ref(&before)),
                endpoints_for(&svc, &[changed.clone()]),
                "{pointer}"
            );
        }
        // The cache names the Service again for such a change, and not for a status write.
        assert_eq!(cache.set_pod(&changed, false).len(), 1, "{pointer}");
        assert_eq!(cache.set_pod(&before, false).len(), 1, "{pointer}");
        let mut written = before.clone();
        written["metadata"]["resourceVersion"] = json!("100");
        assert!(cache.set_pod(&written, false).is_empty(), "{pointer}");
    }
}
