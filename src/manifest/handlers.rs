//! Checks on the strings of a container that reach another program or the network: the image
//! (an image pull), env names (the OCI spec), and the httpGet/tcpSocket/exec handlers of probes
//! and lifecycle hooks (an HTTP request the agent makes). The agent passes all of them as data
//! (argv, JSON, a parsed URL), never through a shell; these checks refuse at commit time what
//! Kubernetes' validation refuses, plus what would be silently mangled on the way (a control
//! character in a URL path), so the author sees one clear error instead of a pod that never
//! starts.

use super::parse::Report;
use super::positions::{field, item};
use super::validate::{dns_subdomain_problem, port_name_problem};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Kubernetes' `IsEnvVarName` (relaxed form, GA since 1.34): printable ASCII but '='.
pub fn env_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    if !name
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'=')
    {
        return Some("must consist of printable ASCII characters other than '='".to_string());
    }
    None
}

/// Kubernetes' `IsHTTPHeaderName`: letters, digits and '-'.
pub fn header_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Some("must consist of letters, digits and '-'".to_string());
    }
    None
}

/// A header value goes on one line of an HTTP request: no CR, LF or other control
/// character but tab (RFC 9110 field-value).
pub fn header_value_problem(value: &str) -> Option<String> {
    value
        .chars()
        .any(|c| c.is_control() && c != '\t')
        .then(|| "must not contain control characters (a newline would end the header)".into())
}

/// An HTTP probe's path: a URL path, so no whitespace or control characters (percent-encode
/// them: `%20`); otherwise the URL parser would drop or re-encode them behind the author's back.
pub fn http_path_problem(path: &str) -> Option<String> {
    path.chars()
        .any(|c| c.is_whitespace() || c.is_control())
        .then(|| "must not contain spaces or control characters (percent-encode them)".into())
}

/// A handler's `host`: an IP address or a DNS name.
pub fn host_problem(host: &str) -> Option<String> {
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    dns_subdomain_problem(&host.to_ascii_lowercase())
        .map(|p| format!("must be an IP address or a DNS name: {p}"))
}

/// The image reference, as the agent's puller will parse it.
pub fn image_problem(image: &str) -> Option<String> {
    if image.trim() != image {
        return Some("must not have leading or trailing whitespace".into());
    }
    let parsed = match crate::agent::image::reference::ImageRef::parse(image) {
        Ok(parsed) => parsed,
        Err(e) => return Some(e.reason.to_string()),
    };
    // The puller puts the registry in a URL: a host, an optional port, nothing else.
    let registry = parsed.registry.as_str();
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !h.contains(':') => (h, Some(p)),
        _ => (registry, None),
    };
    let host_ok = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map_or_else(
            || host_problem(host).is_none(),
            |v6| v6.parse::<std::net::Ipv6Addr>().is_ok(),
        );
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    (!host_ok || !port_ok).then(|| {
        format!("registry {registry:?} is not a host name or address with an optional port")
    })
}

/// Checks the probes and lifecycle hooks of one container at `path`.
pub fn container_handlers(c: &Map<String, Value>, path: &str, report: &mut Report) {
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(Value::Object(p)) = c.get(probe) {
            handler(p, &field(path, probe), report);
        }
    }
    if let Some(Value::Object(lifecycle)) = c.get("lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(Value::Object(h)) = lifecycle.get(hook) {
                handler(h, &field(&field(path, "lifecycle"), hook), report);
            }
        }
    }
}

fn handler(h: &Map<String, Value>, path: &str, report: &mut Report) {
    if let Some(Value::Object(http)) = h.get("httpGet") {
        let at = field(path, "httpGet");
        if let Some(p) = http.get("path").and_then(Value::as_str)
            && let Some(problem) = http_path_problem(p)
        {
            report.error(
                &field(&at, "path"),
                format!("invalid path {p:?}: {problem}"),
            );
        }
        if let Some(scheme) = http.get("scheme").and_then(Value::as_str)
            && !["HTTP", "HTTPS", "http", "https"].contains(&scheme)
        {
            report.error(
                &field(&at, "scheme"),
                format!("scheme must be HTTP or HTTPS, not {scheme:?}"),
            );
        }
        host(http, &at, report);
        port(http.get("port"), &field(&at, "port"), report);
        for (i, header) in http
            .get("httpHeaders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let hat = item(&field(&at, "httpHeaders"), i);
            match header.get("name").and_then(Value::as_str) {
                Some(name) => {
                    if let Some(problem) = header_name_problem(name) {
                        report.error(
                            &field(&hat, "name"),
                            format!("invalid header name {name:?}: {problem}"),
                        );
                    }
                }
                None => report.error(&field(&hat, "name"), "a header needs a name"),
            }
            if let Some(value) = header.get("value").and_then(Value::as_str)
                && let Some(problem) = header_value_problem(value)
            {
                report.error(
                    &field(&hat, "value"),
                    format!("invalid header value {value:?}: {problem}"),
                );
            }
        }
    }
    if let Some(Value::Object(tcp)) = h.get("tcpSocket") {
        let at = field(path, "tcpSocket");
        host(tcp, &at, report);
        port(tcp.get("port"), &field(&at, "port"), report);
    }
    if let Some(Value::Object(exec)) = h.get("exec")
        && exec
            .get("command")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    {
        report.error(
            &field(&field(path, "exec"), "command"),
            "an exec handler needs a command",
        );
    }
}

fn host(map: &Map<String, Value>, at: &str, report: &mut Report) {
    if let Some(h) = map.get("host").and_then(Value::as_str)
        && !h.is_empty()
        && let Some(problem) = host_problem(h)
    {
        report.error(&field(at, "host"), format!("invalid host {h:?}: {problem}"));
    }
}

/// A handler's port: a number 1-65535 or a port name (IANA service name).
fn port(value: Option<&Value>, at: &str, report: &mut Report) {
    match value {
        None => report.error(at, "a port is required"),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(p) if (1..=65535).contains(&p) => {}
            _ => report.error(at, format!("port {n} is out of range 1-65535")),
        },
        Some(Value::String(name)) => {
            if let Some(problem) = port_name_problem(name) {
                report.error(
                    at,
                    format!("port {name:?} is neither a number nor a port name: {problem}"),
                );
            }
        }
        Some(_) => report.error(at, "a port is a number or a port name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_kubernetes() {
        assert_eq!(env_name_problem("PATH"), None);
        assert_eq!(env_name_problem("my.var-1 x"), None);
        assert!(env_name_problem("").is_some());
        assert!(env_name_problem("A=B").is_some());
        assert!(env_name_problem("A\nB").is_some());
        assert!(env_name_problem("ÄB").is_some());
    }

    #[test]
    fn header_names_values_and_paths() {
        assert_eq!(header_name_problem("X-Probe-1"), None);
        assert!(header_name_problem("Host: evil").is_some());
        assert!(header_name_problem("X_Y").is_some());
        assert!(header_name_problem("").is_some());
        assert_eq!(header_value_problem("a\tb $(x); rm"), None);
        assert!(header_value_problem("a\r\nX-Injected: 1").is_some());
        assert_eq!(http_path_problem("/healthz?x=%20&y=1"), None);
        assert!(http_path_problem("/a b").is_some());
        assert!(http_path_problem("/a\nGET /b").is_some());
    }

    #[test]
    fn hosts_and_images() {
        assert_eq!(host_problem("10.0.0.1"), None);
        assert_eq!(host_problem("::1"), None);
        assert_eq!(host_problem("web.default.svc"), None);
        assert!(host_problem("evil.com/#").is_some());
        assert!(host_problem("a;b").is_some());
        assert_eq!(image_problem("192.168.1.21:5000/web:v1"), None);
        assert_eq!(image_problem("nginx"), None);
        assert!(image_problem("x; rm -rf /").is_some());
        assert!(image_problem("x;rm").is_some());
        assert!(image_problem("$(reboot)").is_some());
        assert!(image_problem(" web").is_some());
        assert_eq!(
            image_problem(
                "localhost:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            ),
            None
        );
        assert!(image_problem("evil;x.com/web").is_some());
        assert!(image_problem("x.com:99999/web").is_some());
    }
}
