//! The endpoints controller, as Kubernetes' endpoints and endpointslice controllers: for each
//! Service with a selector, an `Endpoints` object of the same name (no ownerReference, as in
//! Kubernetes) and `EndpointSlice`s owned by the Service (label `kubernetes.io/service-name`),
//! computed from the pods that match the selector in the Service's namespace.
//!
//! - A pod counts when it has a podIP and is not terminating (EndpointSlices keep terminating
//!   pods with `terminating: true, ready: false`, as Kubernetes does, so that a proxy can fall
//!   back on them); pods that ended for good (phase Failed or Succeeded, under restartPolicy
//!   Never/OnFailure) do not count.
//! - Ready pods (condition Ready True) are `addresses`, others `notReadyAddresses`;
//!   `publishNotReadyAddresses` makes every counted pod ready.
//! - Each Service port's `targetPort` is resolved per pod: a number as is, a name through the
//!   pod's container ports (same protocol); a pod without that name is left out of that port.
//! - Subsets are packed as Kubernetes' `RepackSubsets` does (ports grouped by identical address
//!   sets) and sorted, so that unchanged input compares equal and writes nothing.
//! - Services without a selector keep the Endpoints given in the source (never touched here);
//!   their EndpointSlices are mirrored from those Endpoints, as Kubernetes' endpointslice
//!   mirroring controller does. ExternalName Services get no endpoints (ours are removed).
//! - When a Service goes, its Endpoints go here; its EndpointSlices go through the garbage
//!   collector (ownerReference), as in Kubernetes.
//!
//! Pod and Service changes reach the reconciler at once through the watch (not a timer), so
//! a pod whose readiness probe fails leaves the ready addresses as soon as its node reports it.

use crate::api::pod::{is_ready, is_terminating};
use crate::api::selector::Selector;
use crate::api::{Kind, MANAGED_BY_LABEL, ObjectKey, ObjectMeta};
use crate::controller::runtime::{Action, Context, ReconcileError, Reconciler};
use crate::store::{Op, StoreError, WatchEvent, WatchEventType};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages an EndpointSlice.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on slices computed from pods.
pub const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Its value on slices mirrored from Endpoints given in the source.
pub const SLICE_MIRRORING: &str = "endpointslicemirroring-controller.k8s.io";
/// The label marking Endpoints this controller wrote (Kubernetes 1.33+ sets it too); Endpoints
/// without it (given in the source) are never changed or deleted here.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
pub const ENDPOINTS_CONTROLLER: &str = "endpoint-controller";
/// The label on the Endpoints and slices of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Kubernetes' default maximum of endpoints per slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// One Service port, as it appears in Endpoints and EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct EndpointPort {
    name: String,
    port: i64,
    protocol: String,
    app_protocol: Option<String>,
}

impl EndpointPort {
    fn to_json(&self) -> Value {
        let mut p = json!({"name": self.name, "port": self.port, "protocol": self.protocol});
        if let Some(a) = &self.app_protocol {
            p["appProtocol"] = json!(a);
        }
        p
    }
}

/// One pod as an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    ip: String,
    hostname: Option<String>,
    node_name: Option<String>,
    /// (namespace, name, uid) of the pod.
    target: Option<(String, String, String)>,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl Endpoint {
    /// Kubernetes' `LessEndpointAddress` order: IP, then the pod's uid.
    fn sort_key(&self) -> (&str, &str) {
        (
            self.ip.as_str(),
            self.target.as_ref().map_or("", |t| t.2.as_str()),
        )
    }

    fn address_json(&self) -> Value {
        let mut a = json!({"ip": self.ip});
        if let Some(h) = &self.hostname {
            a["hostname"] = json!(h);
        }
        if let Some(n) = &self.node_name {
            a["nodeName"] = json!(n);
        }
        if let Some(t) = self.target_ref() {
            a["targetRef"] = t;
        }
        a
    }

    fn target_ref(&self) -> Option<Value> {
        let (ns, name, uid) = self.target.as_ref()?;
        Some(json!({"kind": "Pod", "namespace": ns, "name": name, "uid": uid}))
    }

    fn slice_json(&self) -> Value {
        let mut e = json!({
            "addresses": [self.ip],
            "conditions": {"ready": self.ready, "serving": self.serving, "terminating": self.terminating},
        });
        if let Some(h) = &self.hostname {
            e["hostname"] = json!(h);
        }
        if let Some(n) = &self.node_name {
            e["nodeName"] = json!(n);
        }
        if let Some(t) = self.target_ref() {
            e["targetRef"] = t;
        }
        e
    }
}

/// The part of a Service the controller reads.
struct ServiceView<'a> {
    namespace: &'a str,
    name: &'a str,
    selector: Option<Selector>,
    headless: bool,
    external_name: bool,
    publish_not_ready: bool,
    ports: Vec<&'a Value>,
}

impl<'a> ServiceView<'a> {
    fn of(service: &'a Value) -> ServiceView<'a> {
        let spec = service.get("spec");
        let str_at = |f: &str| spec.and_then(|s| s.get(f)).and_then(Value::as_str);
        ServiceView {
            namespace: service.meta_str("namespace").unwrap_or("default"),
            name: service.meta_str("name").unwrap_or_default(),
            selector: selector_of(service),
            headless: str_at("clusterIP") == Some("None"),
            external_name: str_at("type") == Some("ExternalName"),
            publish_not_ready: spec
                .and_then(|s| s.get("publishNotReadyAddresses"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ports: spec
                .and_then(|s| s.get("ports"))
                .and_then(Value::as_array)
                .map(|p| p.iter().collect())
                .unwrap_or_default(),
        }
    }

    /// Labels of the Endpoints and slices: the Service's (without tend's managed-by label,
    /// which marks objects from the source), plus the headless marker.
    fn labels(&self, service: &Value) -> Map<String, Value> {
        let mut labels = service.labels().cloned().unwrap_or_default();
        labels.remove(MANAGED_BY_LABEL);
        if self.headless {
            labels.insert(HEADLESS_LABEL.into(), json!(""));
        } else {
            labels.remove(HEADLESS_LABEL);
        }
        labels
    }
}

/// The Service's selector; `None` when it has none (an empty selector counts as none, as the
/// API server stores it).
pub fn selector_of(service: &Value) -> Option<Selector> {
    let map = service.pointer("/spec/selector")?.as_object()?;
    if map.is_empty() {
        return None;
    }
    Some(Selector::from_labels(map))
}

/// Whether a pod belongs in a Service's endpoints at all (Kubernetes'
/// `ShouldPodBeInEndpoints`): it has an IP, is not terminating (unless `include_terminating`),
/// and has not ended for good.
fn should_be_in_endpoints(pod: &Value, include_terminating: bool) -> bool {
    if pod_ip(pod).is_none() {
        return false;
    }
    if !include_terminating && is_terminating(pod) {
        return false;
    }
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    match pod.pointer("/spec/restartPolicy").and_then(Value::as_str) {
        Some("Never") => phase != Some("Failed") && phase != Some("Succeeded"),
        Some("OnFailure") => phase != Some("Succeeded"),
        _ => true,
    }
}

fn pod_ip(pod: &Value) -> Option<&str> {
    pod.pointer("/status/podIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
}

/// The port number `service_port` reaches on `pod` (Kubernetes' `FindPort`): a numeric
/// targetPort as is; a named one through the pod's container ports of the same protocol;
/// `None` when the pod has no port of that name. No targetPort means `port`.
fn find_port(pod: &Value, service_port: &Value) -> Option<i64> {
    let protocol = service_port
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP");
    match service_port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64().filter(|n| *n > 0),
        Some(Value::String(name)) if !name.is_empty() => {
            let containers = pod.pointer("/spec/containers")?.as_array()?;
            containers
                .iter()
                .filter_map(|c| c.get("ports")?.as_array())
                .flatten()
                .find(|p| {
                    p.get("name").and_then(Value::as_str) == Some(name.as_str())
                        && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
                })
                .and_then(|p| p.get("containerPort")?.as_i64())
        }
        _ => service_port.get("port").and_then(Value::as_i64),
    }
}

/// The endpoint port a Service port gives with the resolved number.
fn endpoint_port(service_port: &Value, number: i64) -> EndpointPort {
    let s = |f: &str| service_port.get(f).and_then(Value::as_str);
    EndpointPort {
        name: s("name").unwrap_or_default().to_string(),
        port: number,
        protocol: s("protocol").unwrap_or("TCP").to_string(),
        app_protocol: s("appProtocol").map(str::to_string),
    }
}

/// `pod` as an endpoint of `svc`, with Kubernetes' conditions.
fn endpoint_of(svc: &ServiceView, pod: &Value) -> Option<Endpoint> {
    let ip = pod_ip(pod)?.to_string();
    let terminating = is_terminating(pod);
    let serving = svc.publish_not_ready || is_ready(pod);
    let spec_str = |f: &str| {
        pod.pointer(&format!("/spec/{f}"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let namespace = pod.meta_str("namespace").unwrap_or("default");
    // A pod names itself in DNS under a headless Service it is the subdomain of.
    let hostname = match (spec_str("hostname"), spec_str("subdomain")) {
        (Some(h), Some(sub)) if sub == svc.name && namespace == svc.namespace => {
            Some(h.to_string())
        }
        _ => None,
    };
    Some(Endpoint {
        ip,
        hostname,
        node_name: crate::api::pod::node_name(pod).map(str::to_string),
        target: Some((
            namespace.to_string(),
            pod.meta_str("name").unwrap_or_default().to_string(),
            pod.meta_str("uid").unwrap_or_default().to_string(),
        )),
        ready: svc.publish_not_ready || (serving && !terminating),
        serving,
        terminating,
    })
}

/// The ports `pod` offers for `svc`: every Service port whose targetPort it resolves. `None`
/// inside means "no ports" (a headless Service without ports still lists its pods).
fn ports_of(svc: &ServiceView, pod: &Value) -> Vec<Option<EndpointPort>> {
    if svc.ports.is_empty() {
        return if svc.headless { vec![None] } else { Vec::new() };
    }
    svc.ports
        .iter()
        .filter_map(|sp| find_port(pod, sp).map(|n| Some(endpoint_port(sp, n))))
        .collect()
}

/// Kubernetes' `RepackSubsets`: each port mapped to the addresses offering it, then ports
/// grouped by identical address sets (readiness included). Sorted: addresses by IP and uid,
/// ports by name, number and protocol, subsets by their ports.
fn repack(entries: &[(Endpoint, Vec<Option<EndpointPort>>)]) -> Vec<Value> {
    // port -> (ip, uid) -> endpoint
    let mut by_port: BTreeMap<Option<EndpointPort>, BTreeMap<(String, String), &Endpoint>> =
        BTreeMap::new();
    for (endpoint, ports) in entries {
        for port in ports {
            let (ip, uid) = endpoint.sort_key();
            let addrs = by_port.entry(port.clone()).or_default();
            let key = (ip.to_string(), uid.to_string());
            // Not ready wins over ready for a duplicated address, as in Kubernetes.
            match addrs.get(&key) {
                Some(prev) if !prev.ready => {}
                _ => {
                    addrs.insert(key, endpoint);
                }
            }
        }
    }
    type AddressSet = Vec<(String, String, bool)>;
    let mut groups: BTreeMap<AddressSet, (Vec<&Endpoint>, Vec<Option<EndpointPort>>)> =
        BTreeMap::new();
    for (port, addrs) in by_port {
        let set: AddressSet = addrs
            .iter()
            .map(|((ip, uid), e)| (ip.clone(), uid.clone(), e.ready))
            .collect();
        let group = groups
            .entry(set)
            .or_insert_with(|| (addrs.values().copied().collect(), Vec::new()));
        group.1.push(port);
    }
    let mut subsets: Vec<(Vec<Option<EndpointPort>>, Value)> = groups
        .into_values()
        .map(|(endpoints, ports)| {
            let mut subset = Map::new();
            let ready: Vec<Value> = endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| e.address_json())
                .collect();
            let not_ready: Vec<Value> = endpoints
                .iter()
                .filter(|e| !e.ready)
                .map(|e| e.address_json())
                .collect();
            if !ready.is_empty() {
                subset.insert("addresses".into(), Value::Array(ready));
            }
            if !not_ready.is_empty() {
                subset.insert("notReadyAddresses".into(), Value::Array(not_ready));
            }
            let port_list: Vec<Value> = ports.iter().flatten().map(|p| p.to_json()).collect();
            if !port_list.is_empty() {
                subset.insert("ports".into(), Value::Array(port_list));
            }
            (ports, Value::Object(subset))
        })
        .collect();
    subsets.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.to_string().cmp(&b.1.to_string()))
    });
    subsets.into_iter().map(|(_, s)| s).collect()
}

/// A short, stable name part for a slice's port set and address type.
fn slice_suffix(address_type: &str, ports: &[EndpointPort]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(address_type.as_bytes());
    for p in ports {
        h.update(
            format!(
                "\0{}/{}/{}/{}",
                p.name,
                p.port,
                p.protocol,
                p.app_protocol.as_deref().unwrap_or("")
            )
            .as_bytes(),
        );
    }
    let hex = hex::encode(h.finalize());
    // Kubernetes' name alphabet avoids vowels and look-alikes; hex is enough for stability.
    hex[..8].to_string()
}

/// EndpointSlices for `service` from endpoints with their port sets: one group per (address
/// type, port set), at most `MAX_ENDPOINTS_PER_SLICE` endpoints each, named
/// `<service>-<hash of the group>[-<n>]` so that the same input gives the same names. With no
/// endpoints, one empty placeholder slice (as Kubernetes keeps).
fn slices(
    service: &Value,
    svc: &ServiceView,
    managed_by: &str,
    entries: Vec<(Endpoint, Vec<EndpointPort>)>,
) -> Vec<Value> {
    let mut groups: BTreeMap<(&'static str, Vec<EndpointPort>), Vec<Endpoint>> = BTreeMap::new();
    for (endpoint, mut ports) in entries {
        ports.sort();
        ports.dedup();
        let address_type = if endpoint.ip.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        };
        groups
            .entry((address_type, ports))
            .or_default()
            .push(endpoint);
    }
    if groups.is_empty() {
        groups.insert(("IPv4", Vec::new()), Vec::new());
    }
    let mut labels = svc.labels(service);
    labels.insert(SERVICE_NAME_LABEL.into(), json!(svc.name));
    labels.insert(SLICE_MANAGED_BY_LABEL.into(), json!(managed_by));
    let owner = crate::api::pod::owner_reference(service);
    let mut out = Vec::new();
    for ((address_type, ports), mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let base = format!("{}-{}", svc.name, slice_suffix(address_type, &ports));
        let chunks: Vec<&[Endpoint]> = if endpoints.is_empty() {
            vec![&[]]
        } else {
            endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let name = if i == 0 {
                base.clone()
            } else {
                format!("{base}-{i}")
            };
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": svc.namespace,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "addressType": address_type,
                "endpoints": chunk.iter().map(Endpoint::slice_json).collect::<Vec<_>>(),
                "ports": ports.iter().map(EndpointPort::to_json).collect::<Vec<_>>(),
            }));
        }
    }
    out
}

/// What the controller wants for one Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The Endpoints to write; `None` when the Service's Endpoints are not this controller's
    /// (no selector: they come from the source).
    pub endpoints: Option<Value>,
    pub slices: Vec<Value>,
}

/// The Endpoints and EndpointSlices of a Service with a selector, from `pods` (any pods: those
/// of other namespaces or not matching the selector are ignored). `None` for Services that get
/// none from pods: without a selector, or of type ExternalName.
pub fn endpoints_for(service: &Value, pods: &[Value]) -> Option<(Value, Vec<Value>)> {
    let svc = ServiceView::of(service);
    if svc.external_name {
        return None;
    }
    let selector = svc.selector.as_ref()?;
    let matching = pods.iter().filter(|p| {
        p.meta_str("namespace").unwrap_or("default") == svc.namespace
            && selector.matches(p.labels())
    });
    let mut subset_entries = Vec::new();
    let mut slice_entries = Vec::new();
    for pod in matching {
        // Slices keep terminating pods (terminating: true); Endpoints do not.
        if !should_be_in_endpoints(pod, true) {
            continue;
        }
        let Some(endpoint) = endpoint_of(&svc, pod) else {
            continue;
        };
        let ports = ports_of(&svc, pod);
        if should_be_in_endpoints(pod, svc.publish_not_ready) {
            let mut e = endpoint.clone();
            e.ready = svc.publish_not_ready || is_ready(pod);
            subset_entries.push((e, ports.clone()));
        }
        if !svc.ports.is_empty() && ports.is_empty() {
            // No Service port resolves on this pod: Kubernetes leaves it out of the slices.
            continue;
        }
        slice_entries.push((endpoint, ports.into_iter().flatten().collect()));
    }
    let mut labels = svc.labels(service);
    labels.insert(
        ENDPOINTS_MANAGED_BY_LABEL.into(),
        json!(ENDPOINTS_CONTROLLER),
    );
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": svc.name, "namespace": svc.namespace, "labels": labels},
        "subsets": repack(&subset_entries),
    });
    let slices = slices(service, &svc, SLICE_CONTROLLER, slice_entries);
    Some((endpoints, slices))
}

/// EndpointSlices mirrored from the Endpoints a selectorless Service was given in the source
/// (Kubernetes' endpointslice mirroring controller): each subset's addresses with its ports.
pub fn mirrored_slices(service: &Value, endpoints: &Value) -> Vec<Value> {
    let svc = ServiceView::of(service);
    let mut entries = Vec::new();
    for subset in endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<EndpointPort> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| Some(endpoint_port(p, p.get("port")?.as_i64()?)))
            .collect();
        for (field, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for a in subset
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(ip) = a.get("ip").and_then(Value::as_str) else {
                    continue;
                };
                let s = |f: &str| a.get(f).and_then(Value::as_str).map(str::to_string);
                let target = a.get("targetRef").and_then(|t| {
                    Some((
                        t.get("namespace")
                            .and_then(Value::as_str)
                            .unwrap_or(svc.namespace)
                            .to_string(),
                        t.get("name")?.as_str()?.to_string(),
                        t.get("uid")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ))
                });
                entries.push((
                    Endpoint {
                        ip: ip.to_string(),
                        hostname: s("hostname"),
                        node_name: s("nodeName"),
                        target,
                        ready,
                        serving: ready,
                        terminating: false,
                    },
                    ports.clone(),
                ));
            }
        }
    }
    slices(service, &svc, SLICE_MIRRORING, entries)
}

/// What the controller wants for `service` given its pods and the Endpoints in the store.
/// Selectorless Services: slices mirrored from the source's Endpoints (none without them).
pub fn desired(service: &Value, pods: &[Value], existing_endpoints: Option<&Value>) -> Desired {
    if let Some((endpoints, slices)) = endpoints_for(service, pods) {
        return Desired {
            endpoints: Some(endpoints),
            slices,
        };
    }
    let svc = ServiceView::of(service);
    let slices = match existing_endpoints {
        Some(ep) if !svc.external_name && svc.selector.is_none() && !is_ours(ep) => {
            mirrored_slices(service, ep)
        }
        _ => Vec::new(),
    };
    Desired {
        endpoints: None,
        slices,
    }
}

/// Whether this controller wrote these Endpoints.
fn is_ours(endpoints: &Value) -> bool {
    endpoints
        .labels()
        .and_then(|l| l.get(ENDPOINTS_MANAGED_BY_LABEL))
        .and_then(Value::as_str)
        == Some(ENDPOINTS_CONTROLLER)
}

/// Whether a slice was written by this controller (either way of making it).
fn is_our_slice(slice: &Value) -> bool {
    matches!(
        slice
            .labels()
            .and_then(|l| l.get(SLICE_MANAGED_BY_LABEL))
            .and_then(Value::as_str),
        Some(SLICE_CONTROLLER) | Some(SLICE_MIRRORING)
    )
}

/// Whether the stored object already says what `desired` says: the fields the controller
/// sets (labels, ownerReferences, and everything outside metadata).
pub fn unchanged(stored: &Value, desired: &Value) -> bool {
    let (Some(s), Some(d)) = (stored.as_object(), desired.as_object()) else {
        return false;
    };
    let meta = |o: &Value, f: &str| o.get("metadata").and_then(|m| m.get(f)).cloned();
    let empty = |v: Option<Value>| match v {
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        other => other,
    };
    for f in ["labels", "ownerReferences"] {
        if empty(meta(stored, f)) != empty(meta(desired, f)) {
            return false;
        }
    }
    let body = |o: &Map<String, Value>| -> BTreeMap<String, Value> {
        o.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    body(s) == body(d)
}

/// The write that brings `stored` to `desired`, if any.
fn write(stored: Option<&Value>, desired: Value) -> Option<Op> {
    match stored {
        None => Some(Op::Create(desired)),
        Some(s) if unchanged(s, &desired) => None,
        Some(s) => Some(Op::Put {
            object: desired,
            expect_rv: Some(s.resource_version()),
        }),
    }
}

/// The watch-fed caches (as Kubernetes' informers): pods by namespace, and Services with a
/// selector by namespace, so that a pod change finds its Services without reading the store,
/// and a reconcile finds the Service's pods without decoding every pod of the namespace.
#[derive(Default)]
struct Cache {
    /// namespace -> pod name -> pod
    pods: HashMap<String, BTreeMap<String, Arc<Value>>>,
    /// namespace -> Service name -> selector
    selectors: HashMap<String, BTreeMap<String, Selector>>,
    /// namespace -> pods filed by label, and Services filed by a pair of their selector: a
    /// pod event and a Service sync look only at the candidates these give.
    pod_index: HashMap<String, LabelIndex>,
    selector_index: HashMap<String, LabelIndex>,
}

impl Cache {
    fn services_matching(&self, namespace: &str, pod: &Value) -> Vec<String> {
        let (Some(selectors), Some(index)) = (
            self.selectors.get(namespace),
            self.selector_index.get(namespace),
        ) else {
            return Vec::new();
        };
        index
            .selecting(pod.labels())
            .into_iter()
            .filter(|name| {
                selectors
                    .get(*name)
                    .is_some_and(|s| s.matches(pod.labels()))
            })
            .map(str::to_string)
            .collect()
    }

    /// The cached pods of a namespace matching `selector`, in name order.
    fn pods_matching(&self, namespace: &str, selector: &Selector) -> Vec<Value> {
        let Some(pods) = self.pods.get(namespace) else {
            return Vec::new();
        };
        let labelled = self
            .pod_index
            .get(namespace)
            .and_then(|index| index.labelled(selector));
        let candidates: Box<dyn Iterator<Item = &Arc<Value>>> = match labelled {
            Some(names) => Box::new(names.into_iter().filter_map(|n| pods.get(n))),
            None => Box::new(pods.values()),
        };
        candidates
            .filter(|p| selector.matches(p.labels()))
            .map(|p| Value::clone(p))
            .collect()
    }

    fn set_service(&mut self, service: &Value, deleted: bool) {
        let ns = service.meta_str("namespace").unwrap_or("default");
        let Some(name) = service.meta_str("name") else {
            return;
        };
        let selector = if deleted { None } else { selector_of(service) };
        let services = self.selectors.entry(ns.to_string()).or_default();
        let index = self.selector_index.entry(ns.to_string()).or_default();
        if let Some(old) = services.remove(name) {
            index.remove_selector(name, &old);
        }
        if let Some(sel) = selector {
            index.add_selector(name, &sel);
            services.insert(name.to_string(), sel);
        }
    }

    /// Records a pod change; returns the Services it matched before and after.
    fn set_pod(&mut self, pod: &Value, deleted: bool) -> BTreeSet<String> {
        let ns = pod.meta_str("namespace").unwrap_or("default").to_string();
        let Some(name) = pod.meta_str("name") else {
            return BTreeSet::new();
        };
        if !deleted
            && self
                .pods
                .get(&ns)
                .and_then(|pods| pods.get(name))
                .is_some_and(|known| same_for_endpoints(known, pod))
        {
            // Most pod changes are status writes that change nothing Endpoints show (the
            // times of probes, restart counts): the known state stands for this one.
            return BTreeSet::new();
        }
        let mut services: BTreeSet<String> = self.services_matching(&ns, pod).into_iter().collect();
        let pods = self.pods.entry(ns.clone()).or_default();
        let before = if deleted {
            pods.remove(name)
        } else {
            pods.insert(name.to_string(), Arc::new(pod.clone()))
        };
        let index = self.pod_index.entry(ns.clone()).or_default();
        if let Some(before) = &before {
            index.remove_labels(name, before.labels());
        }
        if !deleted {
            index.add_labels(name, pod.labels());
        }
        if let Some(before) = before {
            services.extend(self.services_matching(&ns, &before));
        }
        services
    }
}

/// Whether two states of a pod give the same endpoints to every Service: the same metadata
/// but for its resourceVersion (name, uid, labels, deletion), the same spec (hostname,
/// subdomain, node, restart policy, container ports), and the same status fields endpoints
/// read (IPs, phase, the Ready condition).
fn same_for_endpoints(a: &Value, b: &Value) -> bool {
    fn meta(pod: &Value) -> Option<impl Iterator<Item = (&String, &Value)>> {
        let meta = pod.get("metadata").and_then(Value::as_object)?;
        Some(meta.iter().filter(|(k, _)| k.as_str() != "resourceVersion"))
    }
    fn status<'a>(pod: &'a Value, field: &str) -> Option<&'a Value> {
        pod.get("status").and_then(|s| s.get(field))
    }
    let same_meta = match (meta(a), meta(b)) {
        (Some(x), Some(y)) => x.eq(y),
        _ => false,
    };
    same_meta
        && a.get("spec") == b.get("spec")
        && ["podIP", "podIPs", "phase"]
            .iter()
            .all(|f| status(a, f) == status(b, f))
        && is_ready(a) == is_ready(b)
}

/// The controller: reconciles one Service key at a time.
#[derive(Default)]
pub struct EndpointsController {
    cache: Mutex<Cache>,
}

impl EndpointsController {
    pub fn new() -> Self {
        Self::default()
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached pods of a namespace matching `selector`.
    fn pods_for(&self, namespace: &str, selector: &Selector) -> Vec<Value> {
        self.cache().pods_matching(namespace, selector)
    }

    /// Writes `desired` for the Service at `key` (`service` when it exists), deleting our
    /// Endpoints and slices it no longer wants.
    fn sync(
        &self,
        key: &ObjectKey,
        service: Option<&Value>,
        ctx: &Context,
    ) -> Result<(), ReconcileError> {
        let ep_key = ObjectKey::new(Kind::Endpoints, &key.namespace, &key.name);
        let stored_ep = ctx.store.get(&ep_key)?;
        let want = match service {
            Some(service) => {
                let pods = match selector_of(service) {
                    Some(sel) => self.pods_for(&key.namespace, &sel),
                    None => Vec::new(),
                };
                desired(service, &pods, stored_ep.as_ref())
            }
            None => Desired {
                endpoints: None,
                slices: Vec::new(),
            },
        };
        let mut ops = Vec::new();
        match (want.endpoints, &stored_ep) {
            (Some(ep), stored) => ops.extend(write(stored.as_ref(), ep)),
            (None, Some(stored)) if is_ours(stored) => ops.push(Op::Delete {
                key: ep_key.clone(),
                expect_rv: Some(stored.resource_version()),
            }),
            _ => {}
        }
        // Our slices now: those owned by this Service (indexed), and any of the wanted names.
        let mut stored_slices: BTreeMap<String, Value> = BTreeMap::new();
        if let Some(uid) = service.and_then(|s| s.meta_str("uid")) {
            for s in ctx
                .store
                .list_owned(Kind::EndpointSlice, &key.namespace, uid)?
            {
                if let Some(n) = s.meta_str("name") {
                    stored_slices.insert(n.to_string(), s);
                }
            }
        }
        let mut wanted = BTreeSet::new();
        for slice in want.slices {
            let Some(name) = slice.meta_str("name").map(str::to_string) else {
                continue;
            };
            let stored = match stored_slices.get(&name) {
                Some(s) => Some(s.clone()),
                None => {
                    ctx.store
                        .get(&ObjectKey::new(Kind::EndpointSlice, &key.namespace, &name))?
                }
            };
            wanted.insert(name);
            ops.extend(write(stored.as_ref(), slice));
        }
        for (name, stale) in &stored_slices {
            if !wanted.contains(name) && is_our_slice(stale) {
                ops.push(Op::Delete {
                    key: ObjectKey::new(Kind::EndpointSlice, &key.namespace, name),
                    expect_rv: Some(stale.resource_version()),
                });
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        match ctx.store.commit(ops) {
            Ok(_) => Ok(()),
            // Someone deleted what we meant to replace: look again.
            Err(StoreError::NotFound { key }) => Err(ReconcileError::Conflict(format!(
                "{key} went away meanwhile"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reconciler for EndpointsController {
    fn wants(&self, kind: Kind, _event_type: WatchEventType) -> bool {
        matches!(
            kind,
            Kind::Service | Kind::Pod | Kind::Endpoints | Kind::EndpointSlice
        )
    }

    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn keys_for(&self, event: &WatchEvent) -> Vec<ObjectKey> {
        let object = &event.object;
        let deleted = event.event_type == WatchEventType::Deleted;
        let Some(key) = ObjectKey::of(object) else {
            return Vec::new();
        };
        let service = |name: &str| ObjectKey::new(Kind::Service, &key.namespace, name);
        match key.kind {
            Kind::Service => {
                self.cache().set_service(object, deleted);
                vec![key]
            }
            Kind::Pod => self
                .cache()
                .set_pod(object, deleted)
                .iter()
                .map(|s| service(s))
                .collect(),
            // Endpoints from the source (mirrored into slices), or ours deleted by hand.
            Kind::Endpoints if deleted || !is_ours(object) => vec![service(&key.name)],
            Kind::EndpointSlice if deleted && is_our_slice(object) => object
                .labels()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .and_then(Value::as_str)
                .map(|s| vec![service(s)])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn initial_keys(&self, ctx: &Context) -> Result<Vec<ObjectKey>, ReconcileError> {
        let (services, _) = ctx.store.list(Kind::Service, None)?;
        let (pods, _) = ctx.store.list(Kind::Pod, None)?;
        let mut cache = Cache::default();
        for s in &services {
            cache.set_service(s, false);
        }
        for p in &pods {
            cache.set_pod(p, false);
        }
        *self.cache() = cache;
        let mut keys: BTreeSet<ObjectKey> = services.iter().filter_map(ObjectKey::of).collect();
        // Endpoints of Services deleted while stopped.
        let (endpoints, _) = ctx.store.list(Kind::Endpoints, None)?;
        for ep in endpoints.iter().filter(|e| is_ours(e)) {
            if let Some(k) = ObjectKey::of(ep) {
                keys.insert(ObjectKey::new(Kind::Service, &k.namespace, &k.name));
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn reconcile(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, ReconcileError> {
        if key.kind != Kind::Service {
            return Ok(Action::Done);
        }
        let service = ctx.store.get(key)?;
        self.sync(key, service.as_ref(), ctx)?;
        Ok(Action::Done)
    }
}

mod label_index;
use label_index::LabelIndex;

#[cfg(test)]
mod tests;
