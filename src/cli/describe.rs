//! `tend describe KIND NAME`: kubectl's describe text. Fetching is at the top; every renderer
//! below is a pure function of the objects (tested on fixtures).

use super::client::Client;
use super::columns::{self, format_endpoints, node_roles, revision_changes, revision_time};
use super::get::{fetch_one, kind_and_name};
use super::humanize::{
    Clock, array, format_label_selector, format_labels, int_at, object, or_none, scalar, str_at,
};
use super::table::{one_line, tabwrite};
use super::{Printed, output};
use crate::api::{Kind, ObjectKey};
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct DescribeArgs {
    /// nodes|deployments|replicasets|pods|services|endpoints|revisions (or KIND/NAME)
    pub kind: String,
    /// The object; for revisions, any unique prefix of the id.
    pub name: Option<String>,
    /// Namespace of namespaced kinds.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

pub fn run(args: DescribeArgs, client: &Client) -> anyhow::Result<Printed> {
    let (kind, name) = kind_and_name(&args.kind, args.name.as_deref())?;
    let Some(name) = name else {
        anyhow::bail!(
            "describe needs a name: tend describe {} NAME",
            kind.plural()
        );
    };
    let ns = args.namespace.as_str();
    let object = fetch_one(client, kind, ns, &name)?;
    let name = str_at(&object, "/metadata/name").to_string();
    // Related objects are a bonus: when they cannot be read, their section is left out.
    let list = |k: Kind, ns: Option<&str>| client.list(k, ns, "").ok();
    let events = || {
        let scope = if kind.namespaced() { Some(ns) } else { None };
        list(Kind::Event, scope).map(|evs| events_for(&evs, &object, kind))
    };
    let clock = Clock::system();
    let text = match kind {
        Kind::Deployment => {
            let rs = list(Kind::ReplicaSet, Some(ns)).unwrap_or_default();
            describe_deployment(&object, &rs, events().as_deref(), &clock)
        }
        Kind::ReplicaSet => {
            let pods = list(Kind::Pod, Some(ns)).unwrap_or_default();
            describe_replicaset(&object, &pods, events().as_deref(), &clock)
        }
        Kind::Pod => describe_pod(&object, events().as_deref(), &clock),
        Kind::Service => {
            let endpoints = client.get(&ObjectKey::new(Kind::Endpoints, ns, &name)).ok();
            describe_service(&object, endpoints.as_ref(), events().as_deref(), &clock)
        }
        Kind::Node => {
            let pods = list(Kind::Pod, None).unwrap_or_default();
            describe_node(&object, &pods, events().as_deref(), &clock)
        }
        Kind::Endpoints => describe_endpoints(&object, events().as_deref(), &clock),
        Kind::Revision => describe_revision(&object, &clock),
        Kind::Event | Kind::EndpointSlice => describe_generic(kind, &object)?,
    };
    Ok(Printed {
        stdout: text,
        stderr: String::new(),
    })
}

/// The events about one object, oldest first.
pub fn events_for(events: &[Value], object: &Value, kind: Kind) -> Vec<Value> {
    let name = str_at(object, "/metadata/name");
    let uid = str_at(object, "/metadata/uid");
    let mut mine: Vec<Value> = events
        .iter()
        .filter(|e| {
            let ev_uid = str_at(e, "/involvedObject/uid");
            str_at(e, "/involvedObject/kind") == kind.name()
                && str_at(e, "/involvedObject/name") == name
                && (uid.is_empty() || ev_uid.is_empty() || uid == ev_uid)
        })
        .cloned()
        .collect();
    // Timestamps have second precision: ties keep the order the events were written in.
    let written = |e: &Value| {
        e.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|rv| rv.parse::<u64>().ok())
            .unwrap_or(0)
    };
    mine.sort_by(|a, b| {
        columns::event_last_seen(a)
            .cmp(columns::event_last_seen(b))
            .then(written(a).cmp(&written(b)))
    });
    mine
}

/// kubectl's `PrefixWriter` over a tabwriter: lines indented by level, cells aligned per
/// block, and `flush` to start a new alignment (as kubectl does before Events).
#[derive(Default)]
struct Doc {
    done: String,
    pending: String,
}

impl Doc {
    fn write(&mut self, level: usize, text: &str) {
        for _ in 0..level {
            self.pending.push_str("  ");
        }
        self.pending.push_str(text);
    }

    fn flush(&mut self) {
        self.done.push_str(&tabwrite(&self.pending, 0, 2));
        self.pending.clear();
    }

    fn finish(mut self) -> String {
        self.flush();
        self.done
    }
}

macro_rules! w {
    ($doc:expr, $level:expr, $($arg:tt)*) => { $doc.write($level, &format!($($arg)*)) };
}

/// One-line text safe inside a tabwriter cell.
fn clean(s: &str) -> String {
    one_line(s)
}

fn labels_multiline(d: &mut Doc, title: &str, labels: Option<&Value>) {
    w!(d, 0, "{title}:\t");
    let mut pairs: Vec<(&String, String)> = labels
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k, clean(&format!("{k}={}", scalar(v)))))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    let pairs: Vec<String> = pairs.into_iter().map(|(_, p)| p).collect();
    if pairs.is_empty() {
        d.write(0, "<none>\n");
    }
    for (i, pair) in pairs.iter().enumerate() {
        if i != 0 {
            d.write(0, "\t");
        }
        w!(d, 0, "{pair}\n");
    }
}

fn annotations_multiline(d: &mut Doc, title: &str, annotations: Option<&Value>) {
    w!(d, 0, "{title}:\t");
    let mut pairs: Vec<(&String, String)> = annotations
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
                .map(|(k, v)| (k, clean(&format!("{k}: {}", scalar(v)))))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    let pairs: Vec<String> = pairs.into_iter().map(|(_, p)| p).collect();
    if pairs.is_empty() {
        d.write(0, "<none>\n");
    }
    for (i, pair) in pairs.iter().enumerate() {
        if i != 0 {
            d.write(0, "\t");
        }
        w!(d, 0, "{pair}\n");
    }
}

/// kubectl's `DescribeEvents` (a new alignment block).
fn events_section(d: &mut Doc, events: Option<&[Value]>, clock: &Clock) {
    let Some(events) = events else { return };
    if events.is_empty() {
        d.write(0, "Events:\t<none>\n");
        return;
    }
    d.flush();
    d.write(0, "Events:\n  Type\tReason\tAge\tFrom\tMessage\n");
    d.write(1, "----\t------\t----\t----\t-------\n");
    for e in events {
        let time = |p: &str| {
            e.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let first = clock.since(time("/eventTime").or(time("/firstTimestamp")));
        let count = int_at(e, "/count", 0);
        let interval = if e.pointer("/series").is_some_and(|s| !s.is_null()) {
            format!(
                "{} (x{} over {first})",
                clock.since(time("/series/lastObservedTime")),
                int_at(e, "/series/count", 0)
            )
        } else if count > 1 {
            format!(
                "{} (x{count} over {first})",
                clock.since(time("/lastTimestamp"))
            )
        } else {
            first
        };
        let source = match str_at(e, "/source/component") {
            "" => str_at(e, "/reportingComponent"),
            s => s,
        };
        w!(
            d,
            1,
            "{}\t{}\t{interval}\t{}\t{}\n",
            str_at(e, "/type"),
            str_at(e, "/reason"),
            clean(source),
            clean(str_at(e, "/message").trim())
        );
    }
}

/// Pod template or pod spec containers (`statuses` for a pod).
fn containers_section(
    d: &mut Doc,
    title: &str,
    spec: &Value,
    statuses: &[Value],
    indent: &str,
    clock: &Clock,
) {
    let containers = array(spec, "/containers");
    w!(d, 0, "{indent}{title}:\n");
    let name_indent = if indent.is_empty() { "" } else { " " };
    for c in containers {
        let name = str_at(c, "/name");
        let status = statuses.iter().find(|s| str_at(s, "/name") == name);
        w!(d, 1, "{name_indent}{name}:\n");
        if let Some(s) = status {
            w!(d, 2, "Container ID:\t{}\n", str_at(s, "/containerID"));
        }
        w!(d, 2, "Image:\t{}\n", str_at(c, "/image"));
        if let Some(s) = status {
            w!(d, 2, "Image ID:\t{}\n", str_at(s, "/imageID"));
        }
        let protocol = |p: &Value| match str_at(p, "/protocol") {
            "" => "TCP".to_string(),
            p => p.to_string(),
        };
        let ports: Vec<String> = array(c, "/ports")
            .iter()
            .map(|p| format!("{}/{}", int_at(p, "/containerPort", 0), protocol(p)))
            .collect();
        let host_ports: Vec<String> = array(c, "/ports")
            .iter()
            .map(|p| format!("{}/{}", int_at(p, "/hostPort", 0), protocol(p)))
            .collect();
        if ports.len() > 1 {
            w!(d, 2, "Ports:\t{}\n", ports.join(", "));
            w!(d, 2, "Host Ports:\t{}\n", host_ports.join(", "));
        } else {
            w!(d, 2, "Port:\t{}\n", or_none(&ports.join(", ")));
            w!(d, 2, "Host Port:\t{}\n", or_none(&host_ports.join(", ")));
        }
        for (field, title) in [("command", "Command"), ("args", "Args")] {
            let items = array(c, &format!("/{field}"));
            if !items.is_empty() {
                w!(d, 2, "{title}:\n");
                for item in items {
                    w!(d, 3, "{}\n", clean(&scalar(item)));
                }
            }
        }
        if let Some(s) = status {
            container_state(d, "State", s.get("state"), clock);
            if s.pointer("/lastState/terminated").is_some() {
                container_state(d, "Last State", s.get("lastState"), clock);
            }
            let ready = s.get("ready").and_then(Value::as_bool).unwrap_or(false);
            w!(d, 2, "Ready:\t{}\n", if ready { "True" } else { "False" });
            w!(d, 2, "Restart Count:\t{}\n", int_at(s, "/restartCount", 0));
        }
        for (field, title) in [("limits", "Limits"), ("requests", "Requests")] {
            if let Some(map) = object(c, &format!("/resources/{field}")).filter(|m| !m.is_empty()) {
                w!(d, 2, "{title}:\n");
                for (k, v) in map {
                    w!(d, 3, "{k}:\t{}\n", scalar(v));
                }
            }
        }
        for (field, title) in [
            ("livenessProbe", "Liveness"),
            ("readinessProbe", "Readiness"),
            ("startupProbe", "Startup"),
        ] {
            if let Some(probe) = c.get(field).filter(|p| p.is_object()) {
                w!(d, 2, "{title}:\t{}\n", describe_probe(probe));
            }
        }
        let env = array(c, "/env");
        w!(
            d,
            2,
            "Environment:{}\n",
            if env.is_empty() { "\t<none>" } else { "" }
        );
        for e in env {
            let name = str_at(e, "/name");
            if let Some(from) = e.get("valueFrom").filter(|v| v.is_object()) {
                let text = if let Some(f) = from.get("fieldRef") {
                    format!(
                        " ({}:{})",
                        str_at(f, "/apiVersion"),
                        str_at(f, "/fieldPath")
                    )
                } else if let Some(r) = from.get("secretKeyRef") {
                    format!(
                        "<set to the key '{}' in secret '{}'>",
                        str_at(r, "/key"),
                        str_at(r, "/name")
                    )
                } else if let Some(r) = from.get("configMapKeyRef") {
                    format!(
                        "<set to the key '{}' of config map '{}'>",
                        str_at(r, "/key"),
                        str_at(r, "/name")
                    )
                } else if let Some(r) = from.get("resourceFieldRef") {
                    format!(
                        "{} ({})",
                        str_at(r, "/resource"),
                        str_at(r, "/containerName")
                    )
                } else {
                    String::new()
                };
                w!(d, 3, "{name}:\t{}\n", clean(&text));
                continue;
            }
            for (i, line) in str_at(e, "/value").split('\n').enumerate() {
                if i == 0 {
                    w!(d, 3, "{name}:\t{}\n", clean(line));
                } else {
                    w!(d, 3, "\t{}\n", clean(line));
                }
            }
        }
        let mounts = array(c, "/volumeMounts");
        if mounts.is_empty() {
            d.write(2, "Mounts:\t<none>\n");
        } else {
            d.write(2, "Mounts:\n");
            for m in mounts {
                let ro = m.get("readOnly").and_then(Value::as_bool).unwrap_or(false);
                w!(
                    d,
                    3,
                    "{} from {} ({})\n",
                    str_at(m, "/mountPath"),
                    str_at(m, "/name"),
                    if ro { "ro" } else { "rw" }
                );
            }
        }
    }
}

fn container_state(d: &mut Doc, title: &str, state: Option<&Value>, clock: &Clock) {
    let state = state.unwrap_or(&Value::Null);
    let time = |p: &str| clock.rfc1123z(state.pointer(p).and_then(Value::as_str));
    if state.get("running").is_some() {
        w!(d, 2, "{title}:\tRunning\n");
        w!(d, 3, "Started:\t{}\n", time("/running/startedAt"));
    } else if let Some(t) = state.get("terminated") {
        w!(d, 2, "{title}:\tTerminated\n");
        if !str_at(t, "/reason").is_empty() {
            w!(d, 3, "Reason:\t{}\n", str_at(t, "/reason"));
        }
        if !str_at(t, "/message").is_empty() {
            w!(d, 3, "Message:\t{}\n", clean(str_at(t, "/message")));
        }
        w!(d, 3, "Exit Code:\t{}\n", int_at(t, "/exitCode", 0));
        if int_at(t, "/signal", 0) > 0 {
            w!(d, 3, "Signal:\t{}\n", int_at(t, "/signal", 0));
        }
        w!(d, 3, "Started:\t{}\n", time("/terminated/startedAt"));
        w!(d, 3, "Finished:\t{}\n", time("/terminated/finishedAt"));
    } else {
        w!(d, 2, "{title}:\tWaiting\n");
        let reason = str_at(state, "/waiting/reason");
        if !reason.is_empty() {
            w!(d, 3, "Reason:\t{reason}\n");
        }
    }
}

/// kubectl's `DescribeProbe`: `http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`.
pub fn describe_probe(probe: &Value) -> String {
    let attrs = format!(
        "delay={}s timeout={}s period={}s #success={} #failure={}",
        int_at(probe, "/initialDelaySeconds", 0),
        int_at(probe, "/timeoutSeconds", 1),
        int_at(probe, "/periodSeconds", 10),
        int_at(probe, "/successThreshold", 1),
        int_at(probe, "/failureThreshold", 3),
    );
    if let Some(exec) = probe.get("exec") {
        let cmd: Vec<String> = array(exec, "/command").iter().map(scalar).collect();
        return format!("exec [{}] {attrs}", cmd.join(" "));
    }
    if let Some(http) = probe.get("httpGet") {
        let scheme = str_at(http, "/scheme").to_ascii_lowercase();
        let scheme = if scheme.is_empty() {
            "http".to_string()
        } else {
            scheme
        };
        let port = http.get("port").map(scalar).unwrap_or_default();
        return format!(
            "http-get {scheme}://{}:{port}{} {attrs}",
            str_at(http, "/host"),
            str_at(http, "/path")
        );
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let port = tcp.get("port").map(scalar).unwrap_or_default();
        return format!("tcp-socket {}:{port} {attrs}", str_at(tcp, "/host"));
    }
    if let Some(grpc) = probe.get("grpc") {
        return format!(
            "grpc <pod>:{} {} {attrs}",
            int_at(grpc, "/port", 0),
            str_at(grpc, "/service")
        );
    }
    format!("unknown {attrs}")
}

fn volumes_section(d: &mut Doc, spec: &Value, indent: &str) {
    let volumes = array(spec, "/volumes");
    if volumes.is_empty() {
        w!(d, 0, "{indent}Volumes:\t<none>\n");
        return;
    }
    w!(d, 0, "{indent}Volumes:\n");
    for v in volumes {
        w!(d, 0, "{indent} {}:\n", str_at(v, "/name"));
        let source = v
            .as_object()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() != "name"));
        match source {
            Some((kind, src)) => {
                let mut kind_name = kind.clone();
                if let Some(first) = kind_name.get_mut(..1) {
                    first.make_ascii_uppercase();
                }
                w!(d, 0, "{indent}  Type:\t{kind_name}\n");
                if let Some(fields) = src.as_object() {
                    for (k, v) in fields {
                        if !v.is_object() && !v.is_array() {
                            w!(d, 0, "{indent}  {k}:\t{}\n", clean(&scalar(v)));
                        }
                    }
                }
            }
            None => w!(d, 0, "{indent}  Type:\t<unknown>\n"),
        }
    }
}

fn pod_template(d: &mut Doc, template: &Value, clock: &Clock) {
    d.write(0, "Pod Template:\n");
    labels_multiline(d, "  Labels", template.pointer("/metadata/labels"));
    if object(template, "/metadata/annotations").is_some_and(|m| !m.is_empty()) {
        annotations_multiline(
            d,
            "  Annotations",
            template.pointer("/metadata/annotations"),
        );
    }
    let spec = template.get("spec").unwrap_or(&Value::Null);
    let sa = str_at(spec, "/serviceAccountName");
    if !sa.is_empty() {
        w!(d, 1, "Service Account:\t{sa}\n");
    }
    if !array(spec, "/initContainers").is_empty() {
        let init = serde_json::json!({"containers": spec.get("initContainers")});
        containers_section(d, "Init Containers", &init, &[], "  ", clock);
    }
    containers_section(d, "Containers", spec, &[], "  ", clock);
    volumes_section(d, spec, "  ");
    w!(
        d,
        1,
        "Node-Selectors:\t{}\n",
        format_labels(spec.get("nodeSelector"))
    );
    w!(d, 1, "Tolerations:\t{}\n", tolerations(spec));
}

fn tolerations(spec: &Value) -> String {
    let list: Vec<String> = array(spec, "/tolerations")
        .iter()
        .map(|t| {
            let mut s = str_at(t, "/key").to_string();
            let value = str_at(t, "/value");
            if !value.is_empty() {
                s = format!("{s}={value}");
            } else if str_at(t, "/operator") == "Exists" && s.is_empty() {
                s = "op=Exists".into();
            }
            let effect = str_at(t, "/effect");
            if !effect.is_empty() {
                s = format!("{s}:{effect}");
            }
            s
        })
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(", ")
    }
}

fn conditions_table(d: &mut Doc, obj: &Value) {
    let conditions = array(obj, "/status/conditions");
    if conditions.is_empty() {
        return;
    }
    d.write(0, "Conditions:\n  Type\tStatus\tReason\n");
    d.write(1, "----\t------\t------\n");
    for c in conditions {
        w!(
            d,
            1,
            "{} \t{}\t{}\n",
            str_at(c, "/type"),
            str_at(c, "/status"),
            str_at(c, "/reason")
        );
    }
}

fn controlled_by(d: &mut Doc, obj: &Value) {
    let owner = array(obj, "/metadata/ownerReferences")
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true));
    if let Some(o) = owner {
        w!(
            d,
            0,
            "Controlled By:\t{}/{}\n",
            str_at(o, "/kind"),
            str_at(o, "/name")
        );
    }
}

fn header(d: &mut Doc, obj: &Value, clock: &Clock, namespaced: bool) {
    w!(d, 0, "Name:\t{}\n", str_at(obj, "/metadata/name"));
    if namespaced {
        w!(d, 0, "Namespace:\t{}\n", str_at(obj, "/metadata/namespace"));
    }
    w!(
        d,
        0,
        "CreationTimestamp:\t{}\n",
        clock.rfc1123z(
            obj.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
        )
    );
}

/// The ReplicaSets a Deployment owns: by owner uid, or by name and selector when the
/// ReplicaSet carries no owner reference.
fn owned_replicasets<'a>(deploy: &Value, replica_sets: &'a [Value]) -> Vec<&'a Value> {
    let uid = str_at(deploy, "/metadata/uid");
    let name = str_at(deploy, "/metadata/name");
    replica_sets
        .iter()
        .filter(|rs| {
            let owners = array(rs, "/metadata/ownerReferences");
            if owners.is_empty() {
                str_at(rs, "/metadata/name").starts_with(&format!("{name}-"))
            } else {
                owners.iter().any(|o| {
                    str_at(o, "/kind") == "Deployment"
                        && str_at(o, "/name") == name
                        && (uid.is_empty()
                            || str_at(o, "/uid").is_empty()
                            || str_at(o, "/uid") == uid)
                })
            }
        })
        .collect()
}

const REVISION: &str = "/metadata/annotations/deployment.kubernetes.io~1revision";

/// Which owned ReplicaSet is the new one: the one carrying the Deployment's revision, else
/// the highest revision.
fn new_replicaset<'a>(deploy: &Value, owned: &[&'a Value]) -> Option<&'a Value> {
    let revision = |v: &Value| str_at(v, REVISION).parse::<i64>().unwrap_or(0);
    let want = str_at(deploy, REVISION);
    owned
        .iter()
        .find(|rs| !want.is_empty() && str_at(rs, REVISION) == want)
        .or_else(|| owned.iter().max_by_key(|rs| revision(rs)))
        .copied()
}

fn replicasets_line(list: &[&Value]) -> String {
    if list.is_empty() {
        return "<none>".into();
    }
    list.iter()
        .map(|rs| {
            format!(
                "{} ({}/{} replicas created)",
                str_at(rs, "/metadata/name"),
                int_at(rs, "/status/replicas", 0),
                int_at(rs, "/spec/replicas", 1)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn describe_deployment(
    deploy: &Value,
    replica_sets: &[Value],
    events: Option<&[Value]>,
    clock: &Clock,
) -> String {
    let mut d = Doc::default();
    header(&mut d, deploy, clock, true);
    labels_multiline(&mut d, "Labels", deploy.pointer("/metadata/labels"));
    annotations_multiline(
        &mut d,
        "Annotations",
        deploy.pointer("/metadata/annotations"),
    );
    w!(
        d,
        0,
        "Selector:\t{}\n",
        format_label_selector(deploy.pointer("/spec/selector"))
    );
    w!(
        d,
        0,
        "Replicas:\t{} desired | {} updated | {} total | {} available | {} unavailable\n",
        int_at(deploy, "/spec/replicas", 1),
        int_at(deploy, "/status/updatedReplicas", 0),
        int_at(deploy, "/status/replicas", 0),
        int_at(deploy, "/status/availableReplicas", 0),
        int_at(deploy, "/status/unavailableReplicas", 0)
    );
    let strategy = match str_at(deploy, "/spec/strategy/type") {
        "" => "RollingUpdate",
        s => s,
    };
    w!(d, 0, "StrategyType:\t{strategy}\n");
    w!(
        d,
        0,
        "MinReadySeconds:\t{}\n",
        int_at(deploy, "/spec/minReadySeconds", 0)
    );
    if strategy == "RollingUpdate" {
        let field = |f: &str| {
            deploy
                .pointer(&format!("/spec/strategy/rollingUpdate/{f}"))
                .map(scalar)
                .unwrap_or_else(|| "25%".into())
        };
        w!(
            d,
            0,
            "RollingUpdateStrategy:\t{} max unavailable, {} max surge\n",
            field("maxUnavailable"),
            field("maxSurge")
        );
    }
    pod_template(
        &mut d,
        deploy.pointer("/spec/template").unwrap_or(&Value::Null),
        clock,
    );
    conditions_table(&mut d, deploy);
    let owned = owned_replicasets(deploy, replica_sets);
    let new = new_replicaset(deploy, &owned);
    let old: Vec<&Value> = owned
        .iter()
        .filter(|rs| {
            !new.is_some_and(|n| std::ptr::eq(**rs, n)) && int_at(rs, "/spec/replicas", 1) != 0
        })
        .copied()
        .collect();
    w!(d, 0, "OldReplicaSets:\t{}\n", replicasets_line(&old));
    w!(
        d,
        0,
        "NewReplicaSet:\t{}\n",
        replicasets_line(&new.into_iter().collect::<Vec<_>>())
    );
    events_section(&mut d, events, clock);
    d.finish()
}

pub fn describe_replicaset(
    rs: &Value,
    pods: &[Value],
    events: Option<&[Value]>,
    clock: &Clock,
) -> String {
    let mut d = Doc::default();
    w!(d, 0, "Name:\t{}\n", str_at(rs, "/metadata/name"));
    w!(d, 0, "Namespace:\t{}\n", str_at(rs, "/metadata/namespace"));
    w!(
        d,
        0,
        "Selector:\t{}\n",
        format_label_selector(rs.pointer("/spec/selector"))
    );
    labels_multiline(&mut d, "Labels", rs.pointer("/metadata/labels"));
    annotations_multiline(&mut d, "Annotations", rs.pointer("/metadata/annotations"));
    controlled_by(&mut d, rs);
    w!(
        d,
        0,
        "Replicas:\t{} current / {} desired\n",
        int_at(rs, "/status/replicas", 0),
        int_at(rs, "/spec/replicas", 1)
    );
    let selector = selector_of(rs);
    let mine = pods.iter().filter(|p| {
        let owned = array(p, "/metadata/ownerReferences").iter().any(|o| {
            str_at(o, "/kind") == "ReplicaSet" && str_at(o, "/name") == str_at(rs, "/metadata/name")
        });
        owned
            || selector
                .as_ref()
                .is_some_and(|s| s.matches(object(p, "/metadata/labels")))
    });
    let (mut running, mut waiting, mut succeeded, mut failed) = (0, 0, 0, 0);
    for pod in mine {
        match str_at(pod, "/status/phase") {
            "Running" => running += 1,
            "Pending" => waiting += 1,
            "Succeeded" => succeeded += 1,
            "Failed" => failed += 1,
            _ => {}
        }
    }
    w!(
        d,
        0,
        "Pods Status:\t{running} Running / {waiting} Waiting / {succeeded} Succeeded / {failed} Failed\n"
    );
    pod_template(
        &mut d,
        rs.pointer("/spec/template").unwrap_or(&Value::Null),
        clock,
    );
    conditions_table(&mut d, rs);
    events_section(&mut d, events, clock);
    d.finish()
}

/// A `matchLabels`/`matchExpressions` selector as a [`Selector`](crate::api::selector::Selector);
/// `None` when it has no requirement (matches nothing, as for a ReplicaSet).
fn selector_of(obj: &Value) -> Option<crate::api::selector::Selector> {
    let text = format_label_selector(obj.pointer("/spec/selector"));
    if text == "<none>" {
        return None;
    }
    crate::api::selector::Selector::parse(&text).ok()
}

pub fn describe_pod(pod: &Value, events: Option<&[Value]>, clock: &Clock) -> String {
    let mut d = Doc::default();
    w!(d, 0, "Name:\t{}\n", str_at(pod, "/metadata/name"));
    w!(d, 0, "Namespace:\t{}\n", str_at(pod, "/metadata/namespace"));
    if let Some(p) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        w!(d, 0, "Priority:\t{p}\n");
    }
    let sa = str_at(pod, "/spec/serviceAccountName");
    if !sa.is_empty() {
        w!(d, 0, "Service Account:\t{sa}\n");
    }
    let node = str_at(pod, "/spec/nodeName");
    let host_ip = str_at(pod, "/status/hostIP");
    match (node, host_ip) {
        ("", _) => d.write(0, "Node:\t<none>\n"),
        (n, "") => w!(d, 0, "Node:\t{n}\n"),
        (n, ip) => w!(d, 0, "Node:\t{n}/{ip}\n"),
    }
    if let Some(start) = pod.pointer("/status/startTime").and_then(Value::as_str) {
        w!(d, 0, "Start Time:\t{}\n", clock.rfc1123z(Some(start)));
    }
    labels_multiline(&mut d, "Labels", pod.pointer("/metadata/labels"));
    annotations_multiline(&mut d, "Annotations", pod.pointer("/metadata/annotations"));
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        w!(d, 0, "Status:\tTerminating\n");
    } else {
        w!(d, 0, "Status:\t{}\n", str_at(pod, "/status/phase"));
    }
    for (field, title) in [("reason", "Reason"), ("message", "Message")] {
        let v = str_at(pod, &format!("/status/{field}"));
        if !v.is_empty() {
            w!(d, 0, "{title}:\t{}\n", clean(v));
        }
    }
    w!(d, 0, "IP:\t{}\n", str_at(pod, "/status/podIP"));
    let ips = array(pod, "/status/podIPs");
    if ips.is_empty() {
        d.write(0, "IPs:\t<none>\n");
    } else {
        d.write(0, "IPs:\n");
        for ip in ips {
            w!(d, 1, "IP:\t{}\n", str_at(ip, "/ip"));
        }
    }
    controlled_by(&mut d, pod);
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let statuses = array(pod, "/status/containerStatuses");
    if !array(spec, "/initContainers").is_empty() {
        let init = serde_json::json!({"containers": spec.get("initContainers")});
        containers_section(
            &mut d,
            "Init Containers",
            &init,
            array(pod, "/status/initContainerStatuses"),
            "",
            clock,
        );
    }
    containers_section(&mut d, "Containers", spec, statuses, "", clock);
    let conditions = array(pod, "/status/conditions");
    if !conditions.is_empty() {
        d.write(0, "Conditions:\n  Type\tStatus\n");
        for c in conditions {
            w!(d, 1, "{} \t{} \n", str_at(c, "/type"), str_at(c, "/status"));
        }
    }
    volumes_section(&mut d, spec, "");
    w!(d, 0, "QoS Class:\t{}\n", qos_class(spec));
    w!(
        d,
        0,
        "Node-Selectors:\t{}\n",
        format_labels(spec.get("nodeSelector"))
    );
    w!(d, 0, "Tolerations:\t{}\n", tolerations(spec));
    events_section(&mut d, events, clock);
    d.finish()
}

/// Guaranteed when every container's cpu and memory requests equal their limits, BestEffort
/// when none has any, Burstable otherwise.
fn qos_class(spec: &Value) -> &'static str {
    let containers = array(spec, "/containers");
    let empty =
        |c: &Value, f: &str| object(c, &format!("/resources/{f}")).is_none_or(|m| m.is_empty());
    if containers
        .iter()
        .all(|c| empty(c, "requests") && empty(c, "limits"))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = c.pointer(&format!("/resources/limits/{r}"));
            let request = c.pointer(&format!("/resources/requests/{r}")).or(limit);
            limit.is_some() && limit == request
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub fn describe_service(
    svc: &Value,
    endpoints: Option<&Value>,
    events: Option<&[Value]>,
    clock: &Clock,
) -> String {
    let mut d = Doc::default();
    let empty = Value::Null;
    let endpoints = endpoints.unwrap_or(&empty);
    w!(d, 0, "Name:\t{}\n", str_at(svc, "/metadata/name"));
    w!(d, 0, "Namespace:\t{}\n", str_at(svc, "/metadata/namespace"));
    labels_multiline(&mut d, "Labels", svc.pointer("/metadata/labels"));
    annotations_multiline(&mut d, "Annotations", svc.pointer("/metadata/annotations"));
    w!(
        d,
        0,
        "Selector:\t{}\n",
        format_labels(svc.pointer("/spec/selector"))
    );
    let svc_type = match str_at(svc, "/spec/type") {
        "" => "ClusterIP",
        t => t,
    };
    w!(d, 0, "Type:\t{svc_type}\n");
    let policy = str_at(svc, "/spec/ipFamilyPolicy");
    if !policy.is_empty() {
        w!(d, 0, "IP Family Policy:\t{policy}\n");
    }
    let families: Vec<String> = array(svc, "/spec/ipFamilies").iter().map(scalar).collect();
    if !families.is_empty() {
        w!(d, 0, "IP Families:\t{}\n", families.join(","));
    }
    w!(d, 0, "IP:\t{}\n", str_at(svc, "/spec/clusterIP"));
    let ips: Vec<String> = array(svc, "/spec/clusterIPs").iter().map(scalar).collect();
    if !ips.is_empty() {
        w!(d, 0, "IPs:\t{}\n", ips.join(","));
    }
    let external: Vec<String> = array(svc, "/spec/externalIPs").iter().map(scalar).collect();
    if !external.is_empty() {
        w!(d, 0, "External IPs:\t{}\n", external.join(","));
    }
    let external_name = str_at(svc, "/spec/externalName");
    if !external_name.is_empty() {
        w!(d, 0, "External Name:\t{external_name}\n");
    }
    let ports = array(svc, "/spec/ports");
    for p in ports {
        let name = str_at(p, "/name");
        let shown = if name.is_empty() { "<unset>" } else { name };
        let protocol = match str_at(p, "/protocol") {
            "" => "TCP",
            x => x,
        };
        let port = int_at(p, "/port", 0);
        w!(d, 0, "Port:\t{shown}\t{port}/{protocol}\n");
        let target = p
            .get("targetPort")
            .map(scalar)
            .unwrap_or_else(|| port.to_string());
        w!(d, 0, "TargetPort:\t{target}/{protocol}\n");
        let node_port = int_at(p, "/nodePort", 0);
        if node_port != 0 {
            w!(d, 0, "NodePort:\t{shown}\t{node_port}/{protocol}\n");
        }
        w!(
            d,
            0,
            "Endpoints:\t{}\n",
            format_endpoints(endpoints, Some(name))
        );
    }
    if ports.is_empty() {
        w!(d, 0, "Endpoints:\t{}\n", format_endpoints(endpoints, None));
    }
    let affinity = match str_at(svc, "/spec/sessionAffinity") {
        "" => "None",
        a => a,
    };
    w!(d, 0, "Session Affinity:\t{affinity}\n");
    if let Some(t) = svc
        .pointer("/spec/sessionAffinityConfig/clientIP/timeoutSeconds")
        .and_then(Value::as_i64)
    {
        w!(d, 0, "Session Affinity Timeout:\t{t}s\n");
    }
    for (field, title) in [
        ("externalTrafficPolicy", "External Traffic Policy"),
        ("internalTrafficPolicy", "Internal Traffic Policy"),
    ] {
        let v = str_at(svc, &format!("/spec/{field}"));
        if !v.is_empty() {
            w!(d, 0, "{title}:\t{v}\n");
        }
    }
    events_section(&mut d, events, clock);
    d.finish()
}

pub fn describe_endpoints(ep: &Value, events: Option<&[Value]>, clock: &Clock) -> String {
    let mut d = Doc::default();
    w!(d, 0, "Name:\t{}\n", str_at(ep, "/metadata/name"));
    w!(d, 0, "Namespace:\t{}\n", str_at(ep, "/metadata/namespace"));
    labels_multiline(&mut d, "Labels", ep.pointer("/metadata/labels"));
    annotations_multiline(&mut d, "Annotations", ep.pointer("/metadata/annotations"));
    d.write(0, "Subsets:\n");
    for subset in array(ep, "/subsets") {
        let ips = |f: &str| {
            let list: Vec<&str> = array(subset, f).iter().map(|a| str_at(a, "/ip")).collect();
            or_none(&list.join(","))
        };
        w!(d, 1, "Addresses:\t{}\n", ips("/addresses"));
        w!(d, 1, "NotReadyAddresses:\t{}\n", ips("/notReadyAddresses"));
        let ports = array(subset, "/ports");
        if ports.is_empty() {
            d.write(1, "Ports:\t<none>\n");
        } else {
            d.write(1, "Ports:\n    Name\tPort\tProtocol\n");
            d.write(2, "----\t----\t--------\n");
            for p in ports {
                let protocol = match str_at(p, "/protocol") {
                    "" => "TCP",
                    x => x,
                };
                w!(
                    d,
                    2,
                    "{}\t{}\t{protocol}\n",
                    or_unset(str_at(p, "/name")),
                    int_at(p, "/port", 0)
                );
            }
        }
        d.write(0, "\n");
    }
    events_section(&mut d, events, clock);
    d.finish()
}

fn or_unset(s: &str) -> &str {
    if s.is_empty() { "<unset>" } else { s }
}

pub fn describe_node(
    node: &Value,
    pods: &[Value],
    events: Option<&[Value]>,
    clock: &Clock,
) -> String {
    let mut d = Doc::default();
    let name = str_at(node, "/metadata/name");
    w!(d, 0, "Name:\t{name}\n");
    w!(d, 0, "Roles:\t{}\n", node_roles(node));
    labels_multiline(&mut d, "Labels", node.pointer("/metadata/labels"));
    annotations_multiline(&mut d, "Annotations", node.pointer("/metadata/annotations"));
    w!(
        d,
        0,
        "CreationTimestamp:\t{}\n",
        clock.rfc1123z(
            node.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
        )
    );
    let taints: Vec<String> = array(node, "/spec/taints")
        .iter()
        .map(|t| {
            let value = str_at(t, "/value");
            let kv = if value.is_empty() {
                str_at(t, "/key").to_string()
            } else {
                format!("{}={value}", str_at(t, "/key"))
            };
            format!("{kv}:{}", str_at(t, "/effect"))
        })
        .collect();
    if taints.is_empty() {
        d.write(0, "Taints:\t<none>\n");
    }
    for (i, t) in taints.iter().enumerate() {
        if i == 0 {
            w!(d, 0, "Taints:\t{t}\n");
        } else {
            w!(d, 0, "\t{t}\n");
        }
    }
    let unschedulable = node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    w!(d, 0, "Unschedulable:\t{unschedulable}\n");
    let conditions = array(node, "/status/conditions");
    if !conditions.is_empty() {
        d.write(
            0,
            "Conditions:\n  Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage\n",
        );
        d.write(
            1,
            "----\t------\t-----------------\t------------------\t------\t-------\n",
        );
        for c in conditions {
            let time = |p: &str| clock.rfc1123z(c.pointer(p).and_then(Value::as_str));
            w!(
                d,
                1,
                "{} \t{} \t{} \t{} \t{} \t{}\n",
                str_at(c, "/type"),
                str_at(c, "/status"),
                time("/lastHeartbeatTime"),
                time("/lastTransitionTime"),
                str_at(c, "/reason"),
                clean(str_at(c, "/message"))
            );
        }
    }
    d.write(0, "Addresses:\n");
    for a in array(node, "/status/addresses") {
        w!(d, 1, "{}:\t{}\n", str_at(a, "/type"), str_at(a, "/address"));
    }
    for (field, title) in [("capacity", "Capacity"), ("allocatable", "Allocatable")] {
        if let Some(map) = object(node, &format!("/status/{field}")) {
            w!(d, 0, "{title}:\n");
            for (k, v) in map {
                w!(d, 1, "{k}:\t{}\n", scalar(v));
            }
        }
    }
    if let Some(info) = object(node, "/status/nodeInfo") {
        d.write(0, "System Info:\n");
        for (key, title) in [
            ("machineID", "Machine ID"),
            ("systemUUID", "System UUID"),
            ("bootID", "Boot ID"),
            ("kernelVersion", "Kernel Version"),
            ("osImage", "OS Image"),
            ("operatingSystem", "Operating System"),
            ("architecture", "Architecture"),
            ("containerRuntimeVersion", "Container Runtime Version"),
            ("kubeletVersion", "Kubelet Version"),
        ] {
            if let Some(v) = info.get(key) {
                w!(d, 1, "{title}:\t{}\n", scalar(v));
            }
        }
    }
    let cidr = str_at(node, "/spec/podCIDR");
    if !cidr.is_empty() {
        w!(d, 0, "PodCIDR:\t{cidr}\n");
        let cidrs: Vec<String> = array(node, "/spec/podCIDRs").iter().map(scalar).collect();
        w!(
            d,
            0,
            "PodCIDRs:\t{}\n",
            if cidrs.is_empty() {
                cidr.to_string()
            } else {
                cidrs.join(",")
            }
        );
    }
    let running: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            str_at(p, "/spec/nodeName") == name
                && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
        })
        .collect();
    w!(d, 0, "Non-terminated Pods:\t({} in total)\n", running.len());
    if !running.is_empty() {
        d.write(1, "Namespace\tName\tAge\n");
        d.write(1, "---------\t----\t---\n");
        for p in running {
            w!(
                d,
                1,
                "{}\t{}\t{}\n",
                str_at(p, "/metadata/namespace"),
                str_at(p, "/metadata/name"),
                clock.since(
                    p.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                )
            );
        }
    }
    events_section(&mut d, events, clock);
    d.finish()
}

/// tend's source revision: where it came from, what it did, and every error in full.
pub fn describe_revision(rev: &Value, clock: &Clock) -> String {
    let mut d = Doc::default();
    w!(d, 0, "Name:\t{}\n", str_at(rev, "/metadata/name"));
    w!(
        d,
        0,
        "Short ID:\t{}\n",
        columns::short_id(str_at(rev, "/metadata/name"))
    );
    w!(d, 0, "Parent:\t{}\n", or_none(str_at(rev, "/spec/parent")));
    w!(d, 0, "Source:\t{}\n", or_none(str_at(rev, "/spec/source")));
    if let Some(seq) = rev.pointer("/spec/sequence").and_then(Value::as_i64) {
        w!(d, 0, "Sequence:\t{seq}\n");
    }
    w!(
        d,
        0,
        "Author:\t{}\n",
        clean(&or_none(str_at(rev, "/spec/author")))
    );
    w!(
        d,
        0,
        "Time:\t{}\n",
        clock.rfc1123z(rev.pointer("/spec/time").and_then(Value::as_str))
    );
    w!(d, 0, "Recorded:\t{}\n", clock.rfc1123z(revision_time(rev)));
    let message = str_at(rev, "/spec/message").trim_end();
    let mut lines = message.lines();
    w!(d, 0, "Message:\t{}\n", clean(lines.next().unwrap_or("")));
    for line in lines {
        w!(d, 0, "\t{}\n", clean(line));
    }
    w!(d, 0, "Phase:\t{}\n", or_none(str_at(rev, "/status/phase")));
    w!(
        d,
        0,
        "Changes:\t{}\n",
        match revision_changes(rev).as_str() {
            "-" => "<none>".to_string(),
            _ => format!(
                "{} created, {} updated, {} pruned",
                int_at(rev, "/status/changes/created", 0),
                int_at(rev, "/status/changes/updated", 0),
                int_at(rev, "/status/changes/pruned", 0)
            ),
        }
    );
    for (field, title) in [
        ("errors", "Errors"),
        ("warnings", "Warnings"),
        ("objects", "Objects"),
    ] {
        let items = array(rev, &format!("/status/{field}"));
        if items.is_empty() {
            w!(d, 0, "{title}:\t<none>\n");
            continue;
        }
        w!(d, 0, "{title} ({}):\n", items.len());
        for item in items {
            // Errors are shown whole: no truncation, one per line.
            for (i, line) in scalar(item).lines().enumerate() {
                w!(
                    d,
                    1,
                    "{}{}\n",
                    if i == 0 { "" } else { "  " },
                    line.replace('\t', " ")
                );
            }
        }
    }
    d.finish()
}

/// Kinds without a dedicated describer: name, namespace, labels, then the object as YAML.
fn describe_generic(kind: Kind, obj: &Value) -> anyhow::Result<String> {
    let mut d = Doc::default();
    w!(d, 0, "Name:\t{}\n", str_at(obj, "/metadata/name"));
    if kind.namespaced() {
        w!(d, 0, "Namespace:\t{}\n", str_at(obj, "/metadata/namespace"));
    }
    labels_multiline(&mut d, "Labels", obj.pointer("/metadata/labels"));
    let mut text = d.finish();
    text.push_str(&output::to_yaml(obj)?);
    Ok(text)
}

#[cfg(test)]
mod tests;
