//! Validation of one object (after defaulting) and of the whole set of objects.
//! The rules follow Kubernetes' own (`apimachinery/pkg/util/validation`).

use super::parse::Report;
use super::positions::{field, item};
use super::{DesiredObject, Diagnostic};
use crate::api::{Kind, ObjectKey};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;
/// The most bytes an object's annotations may hold, keys and values together (Kubernetes').
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// A DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending
/// with a letter or digit.
pub fn dns_label_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_string());
    }
    if s.len() > DNS_LABEL_MAX {
        return Some(format!("must be at most {DNS_LABEL_MAX} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("must consist of lowercase letters, digits and '-'".to_string());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must start and end with a letter or digit".to_string());
    }
    None
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_string());
    }
    if s.len() > DNS_SUBDOMAIN_MAX {
        return Some(format!("must be at most {DNS_SUBDOMAIN_MAX} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Some("must consist of lowercase letters, digits, '-' and '.'".to_string());
    }
    if s.split('.')
        .any(|part| part.is_empty() || part.starts_with('-') || part.ends_with('-'))
    {
        return Some(
            "each '.'-separated part must start and end with a letter or digit".to_string(),
        );
    }
    None
}

/// Service names are DNS-1035 labels: a DNS-1123 label that starts with a letter.
pub fn service_name_problem(s: &str) -> Option<String> {
    dns_label_problem(s).or_else(|| {
        (!s.starts_with(|c: char| c.is_ascii_lowercase()))
            .then(|| "must start with a lowercase letter".to_string())
    })
}

/// The name part of a label key and a label value: at most 63 characters of
/// letters, digits, '-', '_' and '.', starting and ending with a letter or digit.
fn qualified_part_problem(s: &str, allow_empty: bool) -> Option<String> {
    if s.is_empty() {
        return (!allow_empty).then(|| "must not be empty".to_string());
    }
    if s.len() > DNS_LABEL_MAX {
        return Some(format!("must be at most {DNS_LABEL_MAX} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some("must consist of letters, digits, '-', '_' and '.'".to_string());
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(s.chars().next()) || !edge_ok(s.chars().last()) {
        return Some("must start and end with a letter or digit".to_string());
    }
    None
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && let Some(problem) = dns_subdomain_problem(prefix)
    {
        return Some(format!("prefix `{prefix}` {problem}"));
    }
    qualified_part_problem(name, false).map(|p| format!("name part `{name}` {p}"))
}

pub fn label_value_problem(value: &str) -> Option<String> {
    qualified_part_problem(value, true)
}

/// An IANA service name, the form of named ports: at most 15 lowercase letters, digits
/// and '-', with a letter, no '-' at either end and no "--".
pub fn port_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 15 {
        return Some("must be 1 to 15 characters".to_string());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("must consist of lowercase letters, digits and '-'".to_string());
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("must contain at least one letter".to_string());
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Some("must not start or end with '-' nor contain \"--\"".to_string());
    }
    None
}

/// Checks one defaulted object; errors go to `report` with their field path.
pub fn validate_object(kind: Kind, object: &Value, report: &mut Report) {
    metadata(kind, object, report);
    let spec = object.get("spec").and_then(Value::as_object);
    match (kind, spec) {
        (Kind::Deployment, Some(spec)) => deployment(spec, report),
        (Kind::Service, Some(spec)) => service(spec, report),
        (Kind::Deployment, None) => report.error("spec", "a Deployment needs a spec"),
        (Kind::Endpoints, _) => endpoints(object, report),
        _ => {}
    }
}

/// Endpoints given in the source: addresses are IPs a proxy may send traffic to (not
/// loopback, link-local, multicast or unspecified, as Kubernetes checks), ports are valid and
/// named when a subset has several.
fn endpoints(object: &Value, report: &mut Report) {
    let Some(subsets) = object.get("subsets").and_then(Value::as_array) else {
        return;
    };
    for (i, subset) in subsets.iter().enumerate() {
        let at = item("subsets", i);
        for list in ["addresses", "notReadyAddresses"] {
            let addresses = subset.get(list).and_then(Value::as_array);
            for (j, address) in addresses.into_iter().flatten().enumerate() {
                let path = field(&item(&field(&at, list), j), "ip");
                let ip = address
                    .get("ip")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Some(problem) = endpoint_ip_problem(ip) {
                    report.error(&path, format!("invalid endpoint address {ip:?}: {problem}"));
                }
            }
        }
        let ports = subset.get("ports").and_then(Value::as_array);
        let many = ports.is_some_and(|p| p.len() > 1);
        let mut names = HashSet::new();
        for (j, port) in ports.into_iter().flatten().enumerate() {
            let path = item(&field(&at, "ports"), j);
            let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=65535).contains(&number) {
                report.error(
                    &field(&path, "port"),
                    format!("port must be between 1 and 65535, not {number}"),
                );
            }
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            if !["TCP", "UDP", "SCTP"].contains(&protocol) {
                report.error(
                    &field(&path, "protocol"),
                    format!("protocol must be TCP, UDP or SCTP, not {protocol:?}"),
                );
            }
            let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() && many {
                report.error(
                    &field(&path, "name"),
                    "a subset with several ports must name each of them",
                );
            } else if !name.is_empty() && !names.insert(name) {
                report.error(
                    &field(&path, "name"),
                    format!("port name {name:?} is given twice"),
                );
            }
        }
    }
}

/// Why `ip` cannot be an endpoint address, if it cannot.
fn endpoint_ip_problem(ip: &str) -> Option<&'static str> {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return Some("not an IPv4 or IPv6 address");
    };
    if addr.is_unspecified() {
        return Some("may not be unspecified (0.0.0.0 or ::)");
    }
    if addr.is_loopback() {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1)");
    }
    if addr.is_multicast() {
        return Some("may not be a multicast address");
    }
    let link_local = match addr {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
    }
    None
}

fn metadata(kind: Kind, object: &Value, report: &mut Report) {
    let meta = object.get("metadata");
    match meta.and_then(|m| m.get("name")).and_then(Value::as_str) {
        None => report.error("metadata.name", "metadata.name is required"),
        Some(name) => {
            let problem = if kind == Kind::Service {
                service_name_problem(name).map(|p| format!("a Service name (DNS-1035 label) {p}"))
            } else {
                dns_subdomain_problem(name).map(|p| format!("a name (DNS-1123 subdomain) {p}"))
            };
            if let Some(problem) = problem {
                report.error("metadata.name", format!("invalid name {name:?}: {problem}"));
            }
        }
    }
    if let Some(ns) = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        && let Some(problem) = dns_label_problem(ns)
    {
        report.error(
            "metadata.namespace",
            format!("invalid namespace {ns:?}: a namespace (DNS-1123 label) {problem}"),
        );
    }
    labels(
        meta.and_then(|m| m.get("labels")),
        "metadata.labels",
        report,
    );
    if let Some(Value::Object(annotations)) = meta.and_then(|m| m.get("annotations")) {
        // As Kubernetes (TotalAnnotationSizeLimitB): keys and values together.
        let total: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > ANNOTATIONS_MAX_BYTES {
            report.error(
                "metadata.annotations",
                format!(
                    "annotations are {total} bytes in all, more than the limit of \
                     {ANNOTATIONS_MAX_BYTES} bytes"
                ),
            );
        }
        for key in annotations.keys() {
            if let Some(problem) = label_key_problem(key) {
                report.error(
                    &field("metadata.annotations", key),
                    format!("invalid annotation key {key:?}: {problem}"),
                );
            }
        }
    }
}

fn labels(labels: Option<&Value>, path: &str, report: &mut Report) {
    let Some(Value::Object(labels)) = labels else {
        return;
    };
    for (key, value) in labels {
        let at = field(path, key);
        if let Some(problem) = label_key_problem(key) {
            report.error(&at, format!("invalid label key {key:?}: {problem}"));
        }
        if let Some(value) = value.as_str()
            && let Some(problem) = label_value_problem(value)
        {
            report.error(&at, format!("invalid label value {value:?}: {problem}"));
        }
    }
}

fn int(map: &Map<String, Value>, key: &str) -> Option<i64> {
    map.get(key).and_then(Value::as_i64)
}

fn deployment(spec: &Map<String, Value>, report: &mut Report) {
    for (key, min) in [
        ("replicas", 0),
        ("revisionHistoryLimit", 0),
        ("minReadySeconds", 0),
        ("progressDeadlineSeconds", 1),
    ] {
        if let Some(n) = int(spec, key)
            && n < min
        {
            report.error(
                &field("spec", key),
                format!("{key} must be at least {min}, not {n}"),
            );
        }
    }
    strategy(spec.get("strategy"), report);
    let template_labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object);
    labels(
        spec.get("template")
            .and_then(|t| t.get("metadata"))
            .and_then(|m| m.get("labels")),
        "spec.template.metadata.labels",
        report,
    );
    selector(spec.get("selector"), template_labels, report);
    match spec.get("template").and_then(|t| t.get("spec")) {
        Some(Value::Object(pod)) => pod_spec(pod, "spec.template.spec", report),
        _ => report.error("spec.template", "a Deployment needs a pod template"),
    }
}

/// An int ≥ 0 or a percentage "N%"; returns whether it is zero.
fn int_or_percent(value: &Value, path: &str, report: &mut Report) -> Option<bool> {
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(n) if n >= 0 => Some(n == 0),
            _ => {
                report.error(
                    path,
                    format!("must be an integer ≥ 0 or a percentage, not {n}"),
                );
                None
            }
        },
        Value::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
            Some(Ok(n)) => Some(n == 0),
            _ => {
                report.error(
                    path,
                    format!("must be an integer ≥ 0 or a percentage like \"25%\", not {s:?}"),
                );
                None
            }
        },
        _ => None,
    }
}

fn strategy(strategy: Option<&Value>, report: &mut Report) {
    let Some(Value::Object(strategy)) = strategy else {
        return;
    };
    let kind = strategy.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "RollingUpdate" => {
            let Some(Value::Object(rolling)) = strategy.get("rollingUpdate") else {
                return;
            };
            let path = "spec.strategy.rollingUpdate";
            let surge = rolling
                .get("maxSurge")
                .and_then(|v| int_or_percent(v, &field(path, "maxSurge"), report));
            let unavailable = rolling
                .get("maxUnavailable")
                .and_then(|v| int_or_percent(v, &field(path, "maxUnavailable"), report));
            if let Some(Value::String(s)) = rolling.get("maxUnavailable")
                && s.strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n > 100)
            {
                report.error(
                    &field(path, "maxUnavailable"),
                    "maxUnavailable must not be more than 100%",
                );
            }
            if surge == Some(true) && unavailable == Some(true) {
                report.error(
                    path,
                    "maxSurge and maxUnavailable must not both be 0: the rollout could never \
                     make progress",
                );
            }
        }
        "Recreate" => {
            if strategy.get("rollingUpdate").is_some_and(|v| !v.is_null()) {
                report.error(
                    "spec.strategy.rollingUpdate",
                    "rollingUpdate may only be given when the strategy type is RollingUpdate",
                );
            }
        }
        other => report.error(
            "spec.strategy.type",
            format!("strategy type must be RollingUpdate or Recreate, not {other:?}"),
        ),
    }
}

fn selector(selector: Option<&Value>, template: Option<&Map<String, Value>>, report: &mut Report) {
    let path = "spec.selector";
    let missing = "a Deployment needs spec.selector, not empty, matching the template labels \
                   (e.g. matchLabels: {app: web})";
    let Some(Value::Object(selector)) = selector else {
        report.error(path, missing);
        return;
    };
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let expressions = selector.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(Map::is_empty) && expressions.is_none_or(Vec::is_empty) {
        report.error(path, missing);
        return;
    }
    labels(
        selector.get("matchLabels"),
        "spec.selector.matchLabels",
        report,
    );
    let empty = Map::new();
    let template = template.unwrap_or(&empty);
    let mut matches = true;
    for (key, value) in match_labels.into_iter().flatten() {
        if template.get(key) != Some(value) {
            matches = false;
        }
    }
    for (i, expression) in expressions.into_iter().flatten().enumerate() {
        let at = item("spec.selector.matchExpressions", i);
        let key = expression.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = expression
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let actual = template.get(key).and_then(Value::as_str);
        let operator = expression
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ok = match operator {
            "In" => actual.is_some_and(|a| values.contains(&a)),
            "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
            "Exists" => actual.is_some(),
            "DoesNotExist" => actual.is_none(),
            other => {
                report.error(
                    &field(&at, "operator"),
                    format!("operator must be In, NotIn, Exists or DoesNotExist, not {other:?}"),
                );
                continue;
            }
        };
        matches &= ok;
    }
    if !matches {
        report.error(
            path,
            "spec.selector does not match template labels (spec.template.metadata.labels)",
        );
    }
}

fn pod_spec(pod: &Map<String, Value>, path: &str, report: &mut Report) {
    if let Some(policy) = pod.get("restartPolicy").and_then(Value::as_str)
        && policy != "Always"
    {
        report.error(
            &field(path, "restartPolicy"),
            format!("a Deployment's pods must have restartPolicy Always, not {policy:?}"),
        );
    }
    if let Some(policy) = pod.get("dnsPolicy").and_then(Value::as_str)
        && !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&policy)
    {
        report.error(
            &field(path, "dnsPolicy"),
            format!("unknown dnsPolicy {policy:?}"),
        );
    }
    labels(
        pod.get("nodeSelector"),
        &field(path, "nodeSelector"),
        report,
    );
    let containers = pod.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        report.error(
            &field(path, "containers"),
            "a pod needs at least one container",
        );
    }
    let mut names = HashMap::new();
    for list in ["initContainers", "containers"] {
        let list_path = field(path, list);
        for (i, c) in pod
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Value::Object(c) = c {
                container(c, &item(&list_path, i), &mut names, report);
                if list == "initContainers" {
                    // As Kubernetes: an init container runs to completion, so hooks and
                    // probes have nothing to act on.
                    for forbidden in [
                        "lifecycle",
                        "livenessProbe",
                        "readinessProbe",
                        "startupProbe",
                    ] {
                        if c.contains_key(forbidden) {
                            report.error(
                                &field(&item(&list_path, i), forbidden),
                                "may not be set for init containers",
                            );
                        }
                    }
                }
            }
        }
    }
}

fn container(
    c: &Map<String, Value>,
    path: &str,
    names: &mut HashMap<String, String>,
    report: &mut Report,
) {
    match c
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        None => report.error(&field(path, "name"), "every container needs a name"),
        Some(name) => {
            let at = field(path, "name");
            if let Some(problem) = dns_label_problem(name) {
                report.error(
                    &at,
                    format!("invalid container name {name:?}: a DNS-1123 label {problem}"),
                );
            } else if let Some(first) = names.insert(name.to_string(), path.to_string()) {
                report.error(
                    &at,
                    format!("container name {name:?} is used twice (also at {first})"),
                );
            }
        }
    }
    let image_path = field(path, "image");
    match c.get("image").and_then(Value::as_str) {
        None | Some("") => report.error(&image_path, "every container needs an image"),
        Some(image)
            if image
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control()) =>
        {
            report.error(
                &image_path,
                format!(
                    "invalid image {image:?}: an image reference has no spaces or control \
                     characters (is a comment missing its `#`?)"
                ),
            )
        }
        Some(image) => {
            if let Some(problem) = super::handlers::image_problem(image) {
                report.error(
                    &image_path,
                    format!("invalid image reference {image:?}: {problem}"),
                );
            }
        }
    }
    super::handlers::container_handlers(c, path, report);
    if let Some(policy) = c.get("imagePullPolicy").and_then(Value::as_str)
        && !["Always", "IfNotPresent", "Never"].contains(&policy)
    {
        report.error(
            &field(path, "imagePullPolicy"),
            format!("imagePullPolicy must be Always, IfNotPresent or Never, not {policy:?}"),
        );
    }
    let mut port_names = HashSet::new();
    let ports_path = field(path, "ports");
    for (i, port) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = item(&ports_path, i);
        port_number(
            port.get("containerPort"),
            &field(&at, "containerPort"),
            true,
            report,
        );
        if port
            .get("hostPort")
            .and_then(Value::as_i64)
            .is_some_and(|p| p != 0)
        {
            port_number(port.get("hostPort"), &field(&at, "hostPort"), true, report);
        }
        protocol(port.get("protocol"), &field(&at, "protocol"), report);
        if let Some(name) = port.get("name").and_then(Value::as_str) {
            if let Some(problem) = port_name_problem(name) {
                report.error(
                    &field(&at, "name"),
                    format!("invalid port name {name:?}: {problem}"),
                );
            } else if !port_names.insert(name.to_string()) {
                report.error(
                    &field(&at, "name"),
                    format!("port name {name:?} is used twice"),
                );
            }
        }
    }
    let env_path = field(path, "env");
    for (i, env) in c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = field(&item(&env_path, i), "name");
        match env.get("name").and_then(Value::as_str) {
            Some(name) => {
                if let Some(problem) = super::handlers::env_name_problem(name) {
                    report.error(
                        &at,
                        format!("invalid environment variable name {name:?}: it {problem}"),
                    );
                }
            }
            None => report.error(&at, "every environment variable needs a name"),
        }
    }
}

/// Ports are 1-65535; `required` says whether absence is an error.
fn port_number(value: Option<&Value>, path: &str, required: bool, report: &mut Report) {
    match value.and_then(Value::as_i64) {
        Some(p) if (1..=65535).contains(&p) => {}
        Some(p) => report.error(path, format!("port {p} is out of range 1-65535")),
        None if required => report.error(path, "a port number is required"),
        None => {}
    }
}

fn protocol(value: Option<&Value>, path: &str, report: &mut Report) {
    if let Some(p) = value.and_then(Value::as_str)
        && !["TCP", "UDP", "SCTP"].contains(&p)
    {
        report.error(
            path,
            format!("protocol must be TCP, UDP or SCTP, not {p:?}"),
        );
    }
}

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i64> = 30000..=32767;

fn service(spec: &Map<String, Value>, report: &mut Report) {
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&kind) {
        report.error(
            "spec.type",
            format!("type must be ClusterIP, NodePort, LoadBalancer or ExternalName, not {kind:?}"),
        );
    }
    if let Some(ip) = spec.get("clusterIP").and_then(Value::as_str)
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<Ipv4Addr>().is_err()
    {
        report.error(
            "spec.clusterIP",
            format!("clusterIP must be None or an IPv4 address, not {ip:?}"),
        );
    }
    if kind == "ExternalName"
        && spec
            .get("externalName")
            .and_then(Value::as_str)
            .is_none_or(|n| dns_subdomain_problem(n).is_some())
    {
        report.error(
            "spec.externalName",
            "an ExternalName Service needs externalName, a DNS name",
        );
    }
    if let Some(affinity) = spec.get("sessionAffinity").and_then(Value::as_str)
        && !["None", "ClientIP"].contains(&affinity)
    {
        report.error(
            "spec.sessionAffinity",
            format!("sessionAffinity must be None or ClientIP, not {affinity:?}"),
        );
    }
    if let Some(timeout) = spec
        .get("sessionAffinityConfig")
        .and_then(|c| c.pointer("/clientIP/timeoutSeconds"))
        && !timeout.as_i64().is_some_and(|t| (1..=86_400).contains(&t))
    {
        // As Kubernetes (MaxClientIPServiceAffinitySeconds): it becomes an nftables timeout.
        report.error(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("timeoutSeconds must be 1-86400, not {timeout}"),
        );
    }
    for (i, ip) in spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if ip
            .as_str()
            .is_none_or(|ip| ip.parse::<std::net::IpAddr>().is_err())
        {
            report.error(
                &item("spec.externalIPs", i),
                format!("externalIPs must be IP addresses, not {ip}"),
            );
        }
    }
    labels(spec.get("selector"), "spec.selector", report);
    let ports = spec.get("ports").and_then(Value::as_array);
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ports.is_none_or(Vec::is_empty) && kind != "ExternalName" && !headless {
        report.error("spec.ports", "a Service needs at least one port");
    }
    let ports = ports.map(Vec::as_slice).unwrap_or_default();
    let mut seen = HashMap::new();
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = item("spec.ports", i);
        port_number(port.get("port"), &field(&at, "port"), true, report);
        let protocol_name = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP");
        protocol(port.get("protocol"), &field(&at, "protocol"), report);
        if let Some(number) = port.get("port").and_then(Value::as_i64)
            && let Some(first) = seen.insert((number, protocol_name.to_string()), i)
        {
            report.error(
                &field(&at, "port"),
                format!("port {number}/{protocol_name} is given twice (also spec.ports[{first}])"),
            );
        }
        match port.get("name").and_then(Value::as_str) {
            Some(name) => {
                if let Some(problem) = dns_label_problem(name) {
                    report.error(
                        &field(&at, "name"),
                        format!("invalid port name {name:?}: {problem}"),
                    );
                } else if !names.insert(name.to_string()) {
                    report.error(
                        &field(&at, "name"),
                        format!("port name {name:?} is used twice"),
                    );
                }
            }
            None if ports.len() > 1 => report.error(
                &at,
                "every port needs a name when a Service has more than one port",
            ),
            None => {}
        }
        match port.get("targetPort") {
            Some(Value::Number(_)) => port_number(
                port.get("targetPort"),
                &field(&at, "targetPort"),
                true,
                report,
            ),
            Some(Value::String(name)) => {
                if let Some(problem) = port_name_problem(name) {
                    report.error(
                        &field(&at, "targetPort"),
                        format!(
                            "targetPort {name:?} is neither a number nor a port name: {problem}"
                        ),
                    );
                }
            }
            _ => {}
        }
        if let Some(node_port) = port.get("nodePort").and_then(Value::as_i64)
            && node_port != 0
        {
            let at = field(&at, "nodePort");
            if kind != "NodePort" && kind != "LoadBalancer" {
                report.error(
                    &at,
                    format!(
                        "nodePort may only be given for type NodePort or LoadBalancer, not {kind}"
                    ),
                );
            } else if !NODE_PORT_RANGE.contains(&node_port) {
                report.error(
                    &at,
                    format!("nodePort {node_port} is outside the range 30000-32767"),
                );
            }
        }
    }
}

/// Checks across files: an object defined twice, a NodePort given by two Services, Endpoints
/// given for a Service whose selector already makes them.
/// The error for an object defined a second time (`first_at`, `again_at`: `file:line`).
/// Shared with `set_index`, whose verdicts and words must be this check's.
pub(crate) fn duplicate_message(key: &ObjectKey, first_at: &str, again_at: &str) -> String {
    format!(
        "{} {}/{} is defined twice: at {first_at} and at {again_at}",
        key.kind, key.namespace, key.name
    )
}

/// The error for a nodePort given by two Services (each: its name and `file:line`).
pub(crate) fn node_port_clash_message(
    node_port: impl std::fmt::Display,
    protocol: &str,
    (first, first_at): (&str, &str),
    (other, other_at): (&str, &str),
) -> String {
    format!(
        "nodePort {node_port}/{protocol} is given by service/{first} at {first_at} and by \
         service/{other} at {other_at}"
    )
}

/// The error for Endpoints given beside a Service (at `service_at`) that has a selector.
pub(crate) fn selected_endpoints_message(
    endpoints: &ObjectKey,
    service: &str,
    service_at: &str,
) -> String {
    format!(
        "Endpoints {}/{} are given, but Service {service} at {service_at} has a selector, so \
         its endpoints come from its pods: remove the selector or these Endpoints",
        endpoints.namespace, endpoints.name
    )
}

pub fn validate_set<'a>(objects: impl IntoIterator<Item = &'a DesiredObject>) -> Vec<Diagnostic> {
    let objects: Vec<&DesiredObject> = objects.into_iter().collect();
    let mut errors = endpoints_of_selected_services(&objects);
    let mut by_key: HashMap<&ObjectKey, &DesiredObject> = HashMap::new();
    let mut node_ports: HashMap<(i64, String), &DesiredObject> = HashMap::new();
    let place = |o: &DesiredObject| format!("{}:{}", o.file, o.line);
    for object in objects {
        if let Some(first) = by_key.insert(&object.key, object) {
            errors.push(Diagnostic {
                file: object.file.clone(),
                line: object.line,
                column: 0,
                path: String::new(),
                message: duplicate_message(&object.key, &place(first), &place(object)),
            });
            // Keep the first as the reference for later duplicates.
            by_key.insert(&first.key, first);
        }
        if object.key.kind != Kind::Service {
            continue;
        }
        let ports = object
            .object
            .pointer("/spec/ports")
            .and_then(Value::as_array);
        for port in ports.into_iter().flatten() {
            let Some(node_port) = port.get("nodePort").and_then(Value::as_i64) else {
                continue;
            };
            if node_port == 0 {
                continue;
            }
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            match node_ports.get(&(node_port, protocol.clone())) {
                Some(first) if first.key != object.key => errors.push(Diagnostic {
                    file: object.file.clone(),
                    line: object.line,
                    column: 0,
                    path: "spec.ports".to_string(),
                    message: node_port_clash_message(
                        node_port,
                        &protocol,
                        (&first.key.name, &place(first)),
                        (&object.key.name, &place(object)),
                    ),
                }),
                Some(_) => {}
                None => {
                    node_ports.insert((node_port, protocol), object);
                }
            }
        }
    }
    errors
}

/// Endpoints in the source are for Services without a selector; for one with a selector the
/// endpoints controller writes them, and both would overwrite each other.
fn endpoints_of_selected_services(objects: &[&DesiredObject]) -> Vec<Diagnostic> {
    let selected: HashMap<&ObjectKey, &DesiredObject> = objects
        .iter()
        .filter(|o| o.key.kind == Kind::Service)
        .filter(|o| {
            o.object
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .is_some_and(|s| !s.is_empty())
        })
        .map(|o| (&o.key, *o))
        .collect();
    objects
        .iter()
        .filter(|o| o.key.kind == Kind::Endpoints)
        .filter_map(|o| {
            let service = ObjectKey::new(Kind::Service, &o.key.namespace, &o.key.name);
            let svc = selected.get(&service)?;
            Some(Diagnostic {
                file: o.file.clone(),
                line: o.line,
                column: 0,
                path: String::new(),
                message: selected_endpoints_message(
                    &o.key,
                    &svc.key.name,
                    &format!("{}:{}", svc.file, svc.line),
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(dns_label_problem("xgp-web").is_none());
        assert!(dns_label_problem("Web").is_some());
        assert!(dns_label_problem("-a").is_some());
        assert!(dns_label_problem(&"a".repeat(64)).is_some());
        assert!(dns_subdomain_problem("a.b-c.d").is_none());
        assert!(dns_subdomain_problem("a..b").is_some());
        assert!(dns_subdomain_problem(&"a".repeat(254)).is_some());
        assert!(service_name_problem("1web").is_some());
        assert!(service_name_problem("web1").is_none());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key_problem("app").is_none());
        assert!(label_key_problem("app.kubernetes.io/name").is_none());
        assert!(label_key_problem("Bad Prefix/name").is_some());
        assert!(label_key_problem("a/").is_some());
        assert!(label_key_problem(&"k".repeat(64)).is_some());
        assert!(label_value_problem("").is_none());
        assert!(label_value_problem("v1.2_x").is_none());
        assert!(label_value_problem("-x").is_some());
        assert!(label_value_problem("a b").is_some());
    }

    #[test]
    fn port_names() {
        assert!(port_name_problem("http").is_none());
        assert!(port_name_problem("h2c-8080").is_none());
        assert!(port_name_problem("8080").is_some());
        assert!(port_name_problem("a--b").is_some());
        assert!(port_name_problem("averyveryverylongname").is_some());
    }
}
