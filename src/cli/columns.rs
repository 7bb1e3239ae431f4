//! `kubectl get` columns for every kind tend serves: pure functions from objects to a table.

use super::humanize::{
    Clock, array, format_label_selector, format_labels, int_at, object, or_none, scalar, str_at,
};
use super::table;
use crate::api::Kind;
use serde_json::Value;

/// How a table is laid out (`-o wide`, `-A`, `--show-labels`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOptions {
    pub wide: bool,
    pub all_namespaces: bool,
    pub show_labels: bool,
}

/// The text of `tend get KIND` for these objects, header included.
pub fn render(kind: Kind, objects: &[Value], opts: TableOptions, clock: &Clock) -> String {
    let (mut headers, mut rows) = columns(kind, objects, opts.wide, clock);
    if opts.all_namespaces && kind.namespaced() {
        headers.insert(0, "NAMESPACE");
        for (row, obj) in rows.iter_mut().zip(objects) {
            row.insert(0, str_at(obj, "/metadata/namespace").to_string());
        }
    }
    if opts.show_labels {
        headers.push("LABELS");
        for (row, obj) in rows.iter_mut().zip(objects) {
            row.push(format_labels(obj.pointer("/metadata/labels")));
        }
    }
    let headers: Vec<String> = headers.into_iter().map(str::to_string).collect();
    table::render(&headers, &rows)
}

type Columns = (Vec<&'static str>, Vec<Vec<String>>);

fn columns(kind: Kind, objects: &[Value], wide: bool, clock: &Clock) -> Columns {
    let (headers, wide_headers): (&[&str], &[&str]) = match kind {
        Kind::Node => (
            &["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            &[
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ],
        ),
        Kind::Deployment => (
            &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::ReplicaSet => (
            &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::Pod => (
            &["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            &["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
        ),
        Kind::Service => (
            &[
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
            &["SELECTOR"],
        ),
        Kind::Endpoints => (&["NAME", "ENDPOINTS", "AGE"], &[]),
        Kind::EndpointSlice => (&["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], &[]),
        Kind::Event if wide => (
            &[
                "LAST SEEN",
                "TYPE",
                "REASON",
                "OBJECT",
                "SUBOBJECT",
                "SOURCE",
                "MESSAGE",
                "FIRST SEEN",
                "COUNT",
                "NAME",
            ],
            &[],
        ),
        Kind::Event => (&["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], &[]),
        Kind::Revision if wide => (
            &[
                "NAME", "PHASE", "CHANGES", "AGE", "AUTHOR", "ERRORS", "MESSAGE",
            ],
            &[],
        ),
        Kind::Revision => (&["NAME", "PHASE", "CHANGES", "AGE", "MESSAGE"], &[]),
    };
    let mut headers = headers.to_vec();
    if wide {
        headers.extend_from_slice(wide_headers);
    }
    let rows = objects
        .iter()
        .map(|obj| {
            let mut row = row(kind, obj, wide, clock);
            row.truncate(headers.len());
            row
        })
        .collect();
    (headers, rows)
}

/// The cells of one object, wide columns included (cut off by the caller when not wide).
fn row(kind: Kind, obj: &Value, wide: bool, clock: &Clock) -> Vec<String> {
    let name = str_at(obj, "/metadata/name").to_string();
    let age = clock.since(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
    );
    match kind {
        Kind::Node => {
            let info = |field: &str| {
                let v = str_at(obj, &format!("/status/nodeInfo/{field}"));
                if v.is_empty() {
                    "<unknown>".to_string()
                } else {
                    v.to_string()
                }
            };
            vec![
                name,
                node_status(obj),
                node_roles(obj),
                age,
                str_at(obj, "/status/nodeInfo/kubeletVersion").to_string(),
                node_address(obj, "InternalIP"),
                node_address(obj, "ExternalIP"),
                info("osImage"),
                info("kernelVersion"),
                info("containerRuntimeVersion"),
            ]
        }
        Kind::Deployment => {
            let (containers, images) = containers_and_images(obj);
            vec![
                name,
                format!(
                    "{}/{}",
                    int_at(obj, "/status/readyReplicas", 0),
                    int_at(obj, "/spec/replicas", 1)
                ),
                int_at(obj, "/status/updatedReplicas", 0).to_string(),
                int_at(obj, "/status/availableReplicas", 0).to_string(),
                age,
                containers,
                images,
                format_label_selector(obj.pointer("/spec/selector")),
            ]
        }
        Kind::ReplicaSet => {
            let (containers, images) = containers_and_images(obj);
            vec![
                name,
                int_at(obj, "/spec/replicas", 1).to_string(),
                int_at(obj, "/status/replicas", 0).to_string(),
                int_at(obj, "/status/readyReplicas", 0).to_string(),
                age,
                containers,
                images,
                format_label_selector(obj.pointer("/spec/selector")),
            ]
        }
        Kind::Pod => {
            let status = pod_status(obj, clock);
            let gates = array(obj, "/spec/readinessGates");
            let gates = if gates.is_empty() {
                "<none>".to_string()
            } else {
                let ready = gates
                    .iter()
                    .filter(|g| {
                        let gate = str_at(g, "/conditionType");
                        array(obj, "/status/conditions")
                            .iter()
                            .any(|c| str_at(c, "/type") == gate && str_at(c, "/status") == "True")
                    })
                    .count();
                format!("{ready}/{}", gates.len())
            };
            vec![
                name,
                format!("{}/{}", status.ready, status.total),
                status.reason,
                status.restarts,
                age,
                or_none(str_at(obj, "/status/podIP")),
                or_none(str_at(obj, "/spec/nodeName")),
                or_none(str_at(obj, "/status/nominatedNodeName")),
                gates,
            ]
        }
        Kind::Service => {
            let cluster_ip = str_at(obj, "/spec/clusterIP");
            vec![
                name,
                service_type(obj).to_string(),
                or_none(cluster_ip),
                service_external_ip(obj),
                service_ports(obj),
                age,
                format_labels(obj.pointer("/spec/selector")),
            ]
        }
        Kind::Endpoints => vec![name, format_endpoints(obj, None), age],
        Kind::EndpointSlice => {
            let ports: Vec<String> = array(obj, "/ports")
                .iter()
                .map(|p| int_at(p, "/port", 0).to_string())
                .collect();
            let addresses: Vec<&str> = array(obj, "/endpoints")
                .iter()
                .flat_map(|e| array(e, "/addresses"))
                .filter_map(Value::as_str)
                .collect();
            let mut shown = addresses
                .iter()
                .take(3)
                .copied()
                .collect::<Vec<_>>()
                .join(",");
            if addresses.len() > 3 {
                shown = format!("{shown} + {} more...", addresses.len() - 3);
            }
            vec![
                name,
                str_at(obj, "/addressType").to_string(),
                if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                },
                or_unset(&shown),
                age,
            ]
        }
        Kind::Event => event_row(obj, wide, clock),
        Kind::Revision => {
            let errors = array(obj, "/status/errors").len();
            vec![
                short_id(&name).to_string(),
                str_at(obj, "/status/phase").to_string(),
                revision_changes(obj),
                clock.since(revision_time(obj)),
                if wide {
                    author_name(str_at(obj, "/spec/author")).to_string()
                } else {
                    subject(obj)
                },
                errors.to_string(),
                subject(obj),
            ]
        }
    }
}

fn or_unset(s: &str) -> String {
    if s.is_empty() {
        "<unset>".to_string()
    } else {
        s.to_string()
    }
}

/// `Ready`, `NotReady` or `Unknown`, plus `,SchedulingDisabled` for a cordoned node.
pub fn node_status(node: &Value) -> String {
    let ready = array(node, "/status/conditions")
        .iter()
        .find(|c| str_at(c, "/type") == "Ready");
    let mut status = match ready {
        Some(c) if str_at(c, "/status") == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// Roles from `node-role.kubernetes.io/ROLE` labels and `kubernetes.io/role`, or `<none>`.
pub fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = object(node, "/metadata/labels") {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" && !scalar(v).is_empty() {
                roles.push(scalar(v));
            }
        }
    }
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    }
}

fn node_address(node: &Value, kind: &str) -> String {
    array(node, "/status/addresses")
        .iter()
        .find(|a| str_at(a, "/type") == kind)
        .map(|a| str_at(a, "/address").to_string())
        .unwrap_or_else(|| "<none>".to_string())
}

fn containers_and_images(obj: &Value) -> (String, String) {
    let containers = array(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// What kubectl shows in a pod's READY, STATUS and RESTARTS columns.
pub struct PodStatus {
    pub ready: usize,
    pub total: usize,
    pub reason: String,
    pub restarts: String,
}

/// kubectl's `printPod`: the phase, overridden by the reason of a waiting or terminated
/// container (`CrashLoopBackOff`, `Error`, `Completed`), or `Terminating`.
pub fn pod_status(pod: &Value, clock: &Clock) -> PodStatus {
    let total = array(pod, "/spec/containers").len();
    let mut reason = str_at(pod, "/status/phase").to_string();
    let pod_reason = str_at(pod, "/status/reason");
    if !pod_reason.is_empty() {
        reason = pod_reason.to_string();
    }
    let (mut ready, mut restarts, mut has_running) = (0, 0, false);
    let mut last_restart: Option<&str> = None;
    // Init containers first: the first one not completed names the status (`Init:1/2`,
    // `Init:CrashLoopBackOff`, `Init:Error`), and their restarts are the pod's while it
    // initializes.
    let init_total = array(pod, "/spec/initContainers").len();
    let mut initializing = false;
    for (i, status) in array(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        restarts += int_at(status, "/restartCount", 0);
        if let Some(finished) = status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
        {
            last_restart = last_restart.max(Some(finished));
        }
        let waiting = str_at(status, "/state/waiting/reason");
        reason = if let Some(t) = status.pointer("/state/terminated") {
            if int_at(t, "/exitCode", 0) == 0 {
                continue;
            }
            let r = str_at(t, "/reason");
            if !r.is_empty() {
                format!("Init:{r}")
            } else if int_at(t, "/signal", 0) != 0 {
                format!("Init:Signal:{}", int_at(t, "/signal", 0))
            } else {
                format!("Init:ExitCode:{}", int_at(t, "/exitCode", 0))
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        initializing = true;
        break;
    }
    let initialized = array(pod, "/status/conditions")
        .iter()
        .any(|c| str_at(c, "/type") == "Initialized" && str_at(c, "/status") == "True");
    let app_statuses: &[Value] = if !initializing || initialized {
        restarts = 0;
        last_restart = None;
        array(pod, "/status/containerStatuses")
    } else {
        &[]
    };
    for status in app_statuses.iter().rev() {
        restarts += int_at(status, "/restartCount", 0);
        if let Some(finished) = status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
        {
            last_restart = last_restart.max(Some(finished));
        }
        let waiting = str_at(status, "/state/waiting/reason");
        let terminated = status.pointer("/state/terminated");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if let Some(t) = terminated {
            let r = str_at(t, "/reason");
            reason = if !r.is_empty() {
                r.to_string()
            } else if int_at(t, "/signal", 0) != 0 {
                format!("Signal:{}", int_at(t, "/signal", 0))
            } else {
                format!("ExitCode:{}", int_at(t, "/exitCode", 0))
            };
        } else if status.get("ready").and_then(Value::as_bool) == Some(true) {
            has_running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && has_running {
        let pod_ready = array(pod, "/status/conditions")
            .iter()
            .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True");
        reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if pod_reason == "NodeLost" {
            "Unknown"
        } else {
            "Terminating"
        }
        .to_string();
    }
    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", clock.since(Some(t))),
        _ => restarts.to_string(),
    };
    PodStatus {
        ready,
        total,
        reason,
        restarts,
    }
}

fn service_type(svc: &Value) -> &str {
    match str_at(svc, "/spec/type") {
        "" => "ClusterIP",
        t => t,
    }
}

/// kubectl's `getServiceExternalIP`.
fn service_external_ip(svc: &Value) -> String {
    let external: Vec<String> = array(svc, "/spec/externalIPs").iter().map(scalar).collect();
    match service_type(svc) {
        "ClusterIP" | "NodePort" if !external.is_empty() => external.join(","),
        "ClusterIP" | "NodePort" => "<none>".to_string(),
        "LoadBalancer" => {
            let ingress: Vec<String> = array(svc, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| match str_at(i, "/ip") {
                    "" => str_at(i, "/hostname").to_string(),
                    ip => ip.to_string(),
                })
                .chain(external)
                .collect();
            if ingress.is_empty() {
                "<pending>".to_string()
            } else {
                ingress.join(",")
            }
        }
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `80/TCP`, or `80:30123/TCP` with a NodePort; several joined by commas.
pub fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = array(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = match str_at(p, "/protocol") {
                "" => "TCP",
                p => p,
            };
            match int_at(p, "/nodePort", 0) {
                0 => format!("{}/{protocol}", int_at(p, "/port", 0)),
                node_port => format!("{}:{node_port}/{protocol}", int_at(p, "/port", 0)),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    }
}

/// kubectl's `formatEndpoints`: at most three `ip:port`, then `+ N more...`; `port_name`
/// restricts to one named port (describe service).
pub fn format_endpoints(endpoints: &Value, port_name: Option<&str>) -> String {
    let subsets = array(endpoints, "/subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 3;
    let (mut list, mut count, mut more) = (Vec::new(), 0usize, false);
    for subset in subsets {
        let addresses = array(subset, "/addresses");
        let ports = array(subset, "/ports");
        if ports.is_empty() {
            count += addresses.len();
            for address in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(address, "/ip").to_string());
            }
            continue;
        }
        for port in ports {
            if port_name.is_some_and(|n| n != str_at(port, "/name")) {
                continue;
            }
            count += addresses.len();
            for address in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                let ip = str_at(address, "/ip");
                let p = int_at(port, "/port", 0);
                list.push(if ip.contains(':') {
                    format!("[{ip}]:{p}")
                } else {
                    format!("{ip}:{p}")
                });
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

/// kubectl's `printEvent`.
fn event_row(ev: &Value, wide: bool, clock: &Clock) -> Vec<String> {
    let time = |p: &str| {
        ev.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let first_time = time("/firstTimestamp").or(time("/eventTime"));
    let first = clock.since(first_time);
    let mut last = match time("/lastTimestamp") {
        Some(t) => clock.since(Some(t)),
        None => first.clone(),
    };
    let mut count = int_at(ev, "/count", 0);
    if ev.pointer("/series").is_some_and(|s| !s.is_null()) {
        last = clock.since(time("/series/lastObservedTime"));
        count = int_at(ev, "/series/count", 0);
    } else if count == 0 {
        count = 1;
    }
    let kind = str_at(ev, "/involvedObject/kind").to_ascii_lowercase();
    let name = str_at(ev, "/involvedObject/name");
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    let message = str_at(ev, "/message").trim().to_string();
    if wide {
        let host = str_at(ev, "/source/host");
        let mut source = str_at(ev, "/source/component").to_string();
        if !host.is_empty() {
            source = format!("{source}, {host}");
        }
        vec![
            last,
            str_at(ev, "/type").to_string(),
            str_at(ev, "/reason").to_string(),
            target,
            str_at(ev, "/involvedObject/fieldPath").to_string(),
            source,
            message,
            first,
            count.to_string(),
            str_at(ev, "/metadata/name").to_string(),
        ]
    } else {
        vec![
            last,
            str_at(ev, "/type").to_string(),
            str_at(ev, "/reason").to_string(),
            target,
            message,
        ]
    }
}

/// The last-seen time of an event, for sorting.
pub fn event_last_seen(ev: &Value) -> &str {
    [
        "/series/lastObservedTime",
        "/lastTimestamp",
        "/eventTime",
        "/firstTimestamp",
    ]
    .iter()
    .map(|p| str_at(ev, p))
    .find(|s| !s.is_empty())
    .unwrap_or("")
}

/// 12 characters of a revision id (a commit id, or the hex of `sha256:...`).
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

/// The first line of a revision's message.
pub fn subject(rev: &Value) -> String {
    str_at(rev, "/spec/message")
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// When the revision was recorded (or, failing that, committed).
pub fn revision_time(rev: &Value) -> Option<&str> {
    [
        str_at(rev, "/metadata/creationTimestamp"),
        str_at(rev, "/spec/time"),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
}

/// `+created ~updated -pruned`, or `-` when nothing was applied.
pub fn revision_changes(rev: &Value) -> String {
    match rev.pointer("/status/changes").filter(|c| c.is_object()) {
        Some(c) => format!(
            "+{} ~{} -{}",
            int_at(c, "/created", 0),
            int_at(c, "/updated", 0),
            int_at(c, "/pruned", 0)
        ),
        None => "-".to_string(),
    }
}

/// `Name <email>` -> `Name`.
fn author_name(author: &str) -> &str {
    author.split('<').next().unwrap_or(author).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn clock() -> Clock {
        Clock::fixed("2024-05-01T12:00:00Z")
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "xgp-web", "namespace": "default",
                "creationTimestamp": "2024-05-01T11:56:48Z", "labels": {"app": "xgp-web", "tier": "front"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "xgp-web"}},
                "template": {"metadata": {"labels": {"app": "xgp-web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.25"},
                                            {"name": "sidecar", "image": "busybox"}]}}},
            "status": {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2}})
    }

    #[test]
    fn deployments() {
        let out = render(
            Kind::Deployment,
            &[deployment()],
            TableOptions::default(),
            &clock(),
        );
        assert_eq!(
            lines(&out),
            [
                "NAME      READY   UP-TO-DATE   AVAILABLE   AGE",
                "xgp-web   2/3     3            2           3m12s",
            ]
        );
        let opts = TableOptions {
            wide: true,
            all_namespaces: true,
            show_labels: true,
        };
        let out = render(Kind::Deployment, &[deployment()], opts, &clock());
        assert_eq!(
            lines(&out),
            [
                "NAMESPACE   NAME      READY   UP-TO-DATE   AVAILABLE   AGE     CONTAINERS    IMAGES               SELECTOR      LABELS",
                "default     xgp-web   2/3     3            2           3m12s   web,sidecar   nginx:1.25,busybox   app=xgp-web   app=xgp-web,tier=front",
            ]
        );
    }

    #[test]
    fn replicasets() {
        let rs = json!({"metadata": {"name": "xgp-web-5d4f8c7b9", "creationTimestamp": "2024-04-29T12:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "xgp-web", "pod-template-hash": "5d4f8c7b9"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}}},
            "status": {"replicas": 3, "readyReplicas": 1}});
        let out = render(
            Kind::ReplicaSet,
            std::slice::from_ref(&rs),
            TableOptions::default(),
            &clock(),
        );
        assert_eq!(
            lines(&out),
            [
                "NAME                DESIRED   CURRENT   READY   AGE",
                "xgp-web-5d4f8c7b9   3         3         1       2d"
            ]
        );
        let wide = TableOptions {
            wide: true,
            ..Default::default()
        };
        let out = render(Kind::ReplicaSet, &[rs], wide, &clock());
        assert_eq!(
            lines(&out)[1],
            "xgp-web-5d4f8c7b9   3         3         1       2d    web          nginx:1.25   app=xgp-web,pod-template-hash=5d4f8c7b9"
        );
    }

    fn pods() -> Vec<Value> {
        vec![
            json!({"metadata": {"name": "xgp-web-5d4f8c7b9-abcde", "namespace": "default",
                    "creationTimestamp": "2024-05-01T11:59:55Z"},
                "spec": {"nodeName": "node-1", "containers": [{"name": "web"}]},
                "status": {"phase": "Running", "podIP": "10.244.1.2",
                    "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0,
                        "state": {"running": {"startedAt": "2024-05-01T11:59:57Z"}}}]}}),
            json!({"metadata": {"name": "crash-1", "namespace": "default",
                    "creationTimestamp": "2024-05-01T10:00:00Z"},
                "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": "Running",
                    "containerStatuses": [
                        {"name": "a", "ready": false, "restartCount": 4,
                         "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                         "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:59:00Z"}}},
                        {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}),
            json!({"metadata": {"name": "pending", "creationTimestamp": "2024-05-01T11:59:59Z"},
                "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}}),
        ]
    }

    #[test]
    fn pods_table_and_wide() {
        let out = render(Kind::Pod, &pods(), TableOptions::default(), &clock());
        assert_eq!(
            lines(&out),
            [
                "NAME                      READY   STATUS             RESTARTS      AGE",
                "xgp-web-5d4f8c7b9-abcde   1/1     Running            0             5s",
                "crash-1                   1/2     CrashLoopBackOff   4 (60s ago)   120m",
                "pending                   0/1     Pending            0             1s",
            ]
        );
        let wide = TableOptions {
            wide: true,
            ..Default::default()
        };
        let out = render(Kind::Pod, &pods()[..1], wide, &clock());
        assert_eq!(
            lines(&out),
            [
                "NAME                      READY   STATUS    RESTARTS   AGE   IP           NODE     NOMINATED NODE   READINESS GATES",
                "xgp-web-5d4f8c7b9-abcde   1/1     Running   0          5s    10.244.1.2   node-1   <none>           <none>",
            ]
        );
    }

    #[test]
    fn init_container_statuses_as_kubectl_shows_them() {
        let pod = |inits: Value, apps: Value, initialized: bool| {
            json!({"metadata": {"name": "p", "creationTimestamp": "2024-05-01T11:59:59Z"},
                "spec": {"initContainers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "web"}]},
                "status": {"phase": "Pending",
                    "conditions": [{"type": "Initialized", "status": if initialized { "True" } else { "False" }}],
                    "initContainerStatuses": inits, "containerStatuses": apps}})
        };
        let init_wait = |r: &str| json!({"state": {"waiting": {"reason": r}}, "restartCount": 0});
        let done = json!({"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let app_wait =
            json!([{"name": "web", "state": {"waiting": {"reason": "PodInitializing"}}}]);
        let status = |p: &Value| pod_status(p, &clock());
        let p = pod(
            json!([init_wait("PodInitializing"), init_wait("PodInitializing")]),
            app_wait.clone(),
            false,
        );
        assert_eq!(status(&p).reason, "Init:0/2");
        let p = pod(
            json!([done.clone(), {"state": {"running": {}}}]),
            app_wait.clone(),
            false,
        );
        assert_eq!(status(&p).reason, "Init:1/2");
        let crash = json!({"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 3,
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:59:00Z"}}});
        let p = pod(
            json!([crash, init_wait("PodInitializing")]),
            app_wait.clone(),
            false,
        );
        let s = status(&p);
        assert_eq!(
            (s.reason.as_str(), s.restarts.as_str()),
            ("Init:CrashLoopBackOff", "3 (60s ago)")
        );
        let error = json!({"state": {"terminated": {"exitCode": 2, "reason": "Error"}}});
        let p = pod(json!([done.clone(), error]), app_wait.clone(), false);
        assert_eq!(status(&p).reason, "Init:Error");
        let p = pod(
            json!([done.clone(), {"state": {"terminated": {"exitCode": 3}}}]),
            app_wait.clone(),
            false,
        );
        assert_eq!(status(&p).reason, "Init:ExitCode:3");
        let p = pod(json!([done.clone(), done.clone()]), app_wait, true);
        assert_eq!(status(&p).reason, "PodInitializing");
        let running =
            json!([{"name": "web", "ready": true, "restartCount": 0, "state": {"running": {}}}]);
        let mut p = pod(json!([done.clone(), done]), running, true);
        p["status"]["phase"] = json!("Running");
        let s = status(&p);
        assert_eq!((s.reason.as_str(), s.ready, s.total), ("Running", 1, 1));
    }

    #[test]
    fn terminating_pod() {
        let mut pod = pods().remove(0);
        pod["metadata"]["deletionTimestamp"] = json!("2024-05-01T12:00:00Z");
        assert_eq!(pod_status(&pod, &clock()).reason, "Terminating");
    }

    #[test]
    fn services() {
        let svcs = [
            json!({"metadata": {"name": "xgp-web", "creationTimestamp": "2024-05-01T11:00:00Z"},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "xgp-web"},
                    "ports": [{"port": 80, "nodePort": 30123, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"name": "headless", "creationTimestamp": "2024-05-01T11:00:00Z"},
                "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}),
        ];
        let wide = TableOptions {
            wide: true,
            ..Default::default()
        };
        let out = render(Kind::Service, &svcs, wide, &clock());
        assert_eq!(
            lines(&out),
            [
                "NAME       TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)               AGE   SELECTOR",
                "xgp-web    NodePort    10.96.0.10   <none>        80:30123/TCP,53/UDP   60m   app=xgp-web",
                "headless   ClusterIP   None         <none>        5432/TCP              60m   <none>",
            ]
        );
    }

    #[test]
    fn endpoints_show_three_then_count_the_rest() {
        let ep = json!({"metadata": {"name": "xgp-web", "creationTimestamp": "2024-05-01T11:59:00Z"},
            "subsets": [{"addresses": [{"ip": "10.244.1.2"}, {"ip": "10.244.1.3"}, {"ip": "10.244.2.2"}, {"ip": "10.244.2.3"}],
                         "ports": [{"port": 80, "name": "http"}]}]});
        let out = render(
            Kind::Endpoints,
            &[ep.clone(), json!({"metadata": {"name": "empty"}})],
            TableOptions::default(),
            &clock(),
        );
        assert_eq!(
            lines(&out),
            [
                "NAME      ENDPOINTS                                               AGE",
                "xgp-web   10.244.1.2:80,10.244.1.3:80,10.244.2.2:80 + 1 more...   60s",
                "empty     <none>                                                  <unknown>",
            ]
        );
        assert_eq!(format_endpoints(&ep, Some("other")), "");
    }

    #[test]
    fn nodes() {
        let node = json!({"metadata": {"name": "node-1", "creationTimestamp": "2024-04-01T12:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname": "node-1"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
                "nodeInfo": {"kubeletVersion": "tend-0.1.0", "osImage": "Debian 12"}}});
        let out = render(
            Kind::Node,
            std::slice::from_ref(&node),
            TableOptions::default(),
            &clock(),
        );
        assert_eq!(
            lines(&out),
            [
                "NAME     STATUS                     ROLES           AGE   VERSION",
                "node-1   Ready,SchedulingDisabled   control-plane   30d   tend-0.1.0",
            ]
        );
        let wide = TableOptions {
            wide: true,
            ..Default::default()
        };
        assert!(
            lines(&render(Kind::Node, &[node], wide, &clock()))[1].ends_with(
                "tend-0.1.0   192.168.1.10   <none>        Debian 12   <unknown>        <unknown>"
            )
        );
    }

    #[test]
    fn events() {
        let ev = json!({"metadata": {"name": "xgp-web.17a", "namespace": "default"},
            "type": "Normal", "reason": "ScalingReplicaSet", "count": 2,
            "firstTimestamp": "2024-05-01T11:50:00Z", "lastTimestamp": "2024-05-01T11:59:30Z",
            "involvedObject": {"kind": "Deployment", "name": "xgp-web"},
            "source": {"component": "deployment-controller"},
            "message": "Scaled up replica set xgp-web-5d4f8c7b9 to 3"});
        let out = render(
            Kind::Event,
            std::slice::from_ref(&ev),
            TableOptions::default(),
            &clock(),
        );
        assert_eq!(
            lines(&out),
            [
                "LAST SEEN   TYPE     REASON              OBJECT               MESSAGE",
                "30s         Normal   ScalingReplicaSet   deployment/xgp-web   Scaled up replica set xgp-web-5d4f8c7b9 to 3",
            ]
        );
        let opts = TableOptions {
            wide: true,
            all_namespaces: true,
            ..Default::default()
        };
        assert_eq!(
            lines(&render(Kind::Event, &[ev], opts, &clock()))[0],
            "NAMESPACE   LAST SEEN   TYPE     REASON              OBJECT               SUBOBJECT   SOURCE                  MESSAGE                                        FIRST SEEN   COUNT   NAME"
        );
    }

    fn revisions() -> Vec<Value> {
        vec![
            json!({"metadata": {"name": "4f2a9c1e7b3d5a6f8e9d0c1b2a3f4e5d6c7b8a9f", "creationTimestamp": "2024-05-01T11:59:50Z"},
                "spec": {"message": "Scale web to 3\n\nbody", "author": "Ann Dev <ann@example.com>", "sequence": 2},
                "status": {"phase": "Applied", "changes": {"created": 1, "updated": 2, "pruned": 0}}}),
            json!({"metadata": {"name": "sha256:0123456789abcdef0123", "creationTimestamp": "2024-05-01T11:00:00Z"},
                "spec": {"message": "broken", "author": "Bob <b@x>", "sequence": 1},
                "status": {"phase": "Rejected", "errors": ["web.yaml:3:5: spec.replicas: must be >= 0"]}}),
        ]
    }

    #[test]
    fn revisions_table() {
        let out = render(
            Kind::Revision,
            &revisions(),
            TableOptions::default(),
            &clock(),
        );
        assert_eq!(
            lines(&out),
            [
                "NAME           PHASE      CHANGES    AGE   MESSAGE",
                "4f2a9c1e7b3d   Applied    +1 ~2 -0   10s   Scale web to 3",
                "0123456789ab   Rejected   -          60m   broken",
            ]
        );
        let wide = TableOptions {
            wide: true,
            all_namespaces: true,
            ..Default::default()
        };
        assert_eq!(
            lines(&render(Kind::Revision, &revisions(), wide, &clock())),
            [
                "NAME           PHASE      CHANGES    AGE   AUTHOR    ERRORS   MESSAGE",
                "4f2a9c1e7b3d   Applied    +1 ~2 -0   10s   Ann Dev   0        Scale web to 3",
                "0123456789ab   Rejected   -          60m   Bob       1        broken",
            ]
        );
    }
}
