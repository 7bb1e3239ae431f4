//! Service environment variables: what the kubelet gives every container about the Services
//! that exist when it starts (`{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT`, the Docker-link
//! `{NAME}_PORT_*` ones), computed by [`service_env`] (pure), and the node's cache of Services
//! the pod sync reads them from ([`ServiceCache`], kept by a watch).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

use super::views::ServiceView;

/// The Services the pod sync may read when it starts a container.
pub trait ServiceSource: Send + Sync {
    /// The Services a container of a pod in `namespace` may be told about: those of
    /// `namespace` and the `kubernetes` Service of `default` (a container's variables name
    /// no others, and copying every Service of a large cluster for each container start
    /// cost more than the start). `None` while they have not been read once (the kubelet
    /// then refuses to start containers rather than start them with missing variables).
    fn services_for(&self, namespace: &str) -> Option<Vec<Service>>;

    /// A number that changes whenever the Services may have (so that what was computed from
    /// them can be kept until then); `None`: no such number, compute every time.
    fn version(&self) -> Option<u64> {
        None
    }
}

/// A fixed list (tests, and syncers that were given no cache: no Services at all).
pub struct StaticServices(pub Vec<Service>);

impl ServiceSource for StaticServices {
    fn services_for(&self, namespace: &str) -> Option<Vec<Service>> {
        Some(
            self.0
                .iter()
                .filter(|s| {
                    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                    ns == namespace
                        || (ns == "default" && s.metadata.name.as_deref() == Some("kubernetes"))
                })
                .cloned()
                .collect(),
        )
    }

    fn version(&self) -> Option<u64> {
        Some(0)
    }
}

/// The agent's copy of every Service, kept by a watch ([`super::informer::follow_into`]).
/// It keeps only the fields the agent reads ([`super::views::ServiceView`]).
pub type ServiceCache = super::informer::Informer<ServiceView>;

impl ServiceSource for ServiceCache {
    fn services_for(&self, namespace: &str) -> Option<Vec<Service>> {
        let mut services: Vec<Service> = self
            .namespace_map(namespace, ServiceView::to_k8s)?
            .into_iter()
            .collect();
        if namespace != "default"
            && let Some(master) = self.with(&("default".into(), "kubernetes".into()), |s| {
                s.map(ServiceView::to_k8s)
            })
        {
            services.push(master);
        }
        Some(services)
    }

    fn version(&self) -> Option<u64> {
        Some(self.generation())
    }
}

/// The Services the kubelet names to a container, in kubelet order of precedence: the
/// `kubernetes` Service of the `default` namespace always (also with `enableServiceLinks:
/// false`), and every Service of the pod's `namespace` when `links` is true; only Services
/// with a ClusterIP (not headless, not empty). Sorted by name for a stable environment (the
/// kubelet's order is a Go map's, i.e. none).
///
/// For a Service `my-web` with ClusterIP 10.96.0.10 and ports `http` 80/TCP and 53/UDP:
///
/// ```text
/// MY_WEB_SERVICE_HOST=10.96.0.10
/// MY_WEB_SERVICE_PORT=80
/// MY_WEB_SERVICE_PORT_HTTP=80
/// MY_WEB_PORT=tcp://10.96.0.10:80
/// MY_WEB_PORT_80_TCP=tcp://10.96.0.10:80
/// MY_WEB_PORT_80_TCP_PROTO=tcp
/// MY_WEB_PORT_80_TCP_PORT=80
/// MY_WEB_PORT_80_TCP_ADDR=10.96.0.10
/// MY_WEB_PORT_53_UDP=udp://10.96.0.10:53
/// ...
/// ```
///
/// (k8s.io/kubernetes pkg/kubelet/envvars `FromServices` and kubelet_pods.go
/// `getServiceEnvVarMap`.)
pub fn service_env(services: &[Service], namespace: &str, links: bool) -> Vec<(String, String)> {
    // By name: the first of a name wins (the pod's own namespace has no duplicates; the
    // `kubernetes` Service of `default` may share a name with one of the pod's namespace).
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services.iter().filter(|s| cluster_ip(s).is_some()) {
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let master = ns == "default" && name == "kubernetes";
        if (links && ns == namespace) || master {
            chosen.entry(name).or_insert(s);
        }
    }
    let mut env = Vec::new();
    for (name, s) in chosen {
        let Some(ip) = cluster_ip(s) else { continue };
        let prefix = env_name(name);
        let ports = s
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.clone())
            .unwrap_or_default();
        env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        // A Service without ports gets only its host (the kubelet would crash on it; the API
        // rejects it before).
        let Some(first) = ports.first() else { continue };
        let service_port = format!("{prefix}_SERVICE_PORT");
        env.push((service_port.clone(), first.port.to_string()));
        for p in &ports {
            if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                env.push((
                    format!("{service_port}_{}", env_name(name)),
                    p.port.to_string(),
                ));
            }
        }
        for (i, p) in ports.iter().enumerate() {
            let protocol = p
                .protocol
                .as_deref()
                .filter(|p| !p.is_empty())
                .unwrap_or("TCP");
            let lower = protocol.to_lowercase();
            let host_port = if ip.contains(':') {
                format!("[{ip}]:{}", p.port)
            } else {
                format!("{ip}:{}", p.port)
            };
            let url = format!("{lower}://{host_port}");
            if i == 0 {
                env.push((format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, protocol.to_uppercase());
            env.push((port_prefix.clone(), url));
            env.push((format!("{port_prefix}_PROTO"), lower));
            env.push((format!("{port_prefix}_PORT"), p.port.to_string()));
            env.push((format!("{port_prefix}_ADDR"), ip.to_string()));
        }
    }
    env
}

/// The Service's ClusterIP when it has one (`None` and empty mean none: headless or unset).
fn cluster_ip(s: &Service) -> Option<&str> {
    s.spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

/// The kubelet's `makeEnvVariableName`: upper case, `-` becomes `_` (dots and leading digits
/// are kept, as Kubernetes keeps them).
fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .expect("service")
    }

    fn views(services: &[Service]) -> Vec<ServiceView> {
        services
            .iter()
            .map(|s| ServiceView::from_k8s(s).expect("view"))
            .collect()
    }

    fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn kubernetes_names_for_a_multi_port_service() {
        let services = [svc(
            "default",
            "my-web",
            "10.96.0.10",
            json!([{"name": "http", "port": 80, "protocol": "TCP"},
                   {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
        )];
        let env = service_env(&services, "default", true);
        let expected: Vec<(String, String)> = [
            ("MY_WEB_SERVICE_HOST", "10.96.0.10"),
            ("MY_WEB_SERVICE_PORT", "80"),
            ("MY_WEB_SERVICE_PORT_HTTP", "80"),
            ("MY_WEB_SERVICE_PORT_DNS_UDP", "53"),
            ("MY_WEB_PORT", "tcp://10.96.0.10:80"),
            ("MY_WEB_PORT_80_TCP", "tcp://10.96.0.10:80"),
            ("MY_WEB_PORT_80_TCP_PROTO", "tcp"),
            ("MY_WEB_PORT_80_TCP_PORT", "80"),
            ("MY_WEB_PORT_80_TCP_ADDR", "10.96.0.10"),
            ("MY_WEB_PORT_53_UDP", "udp://10.96.0.10:53"),
            ("MY_WEB_PORT_53_UDP_PROTO", "udp"),
            ("MY_WEB_PORT_53_UDP_PORT", "53"),
            ("MY_WEB_PORT_53_UDP_ADDR", "10.96.0.10"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn an_unnamed_port_defaults_to_tcp_and_gets_no_named_variable() {
        let services = [svc("default", "db", "10.96.0.5", json!([{"port": 5432}]))];
        let env = service_env(&services, "default", true);
        assert_eq!(lookup(&env, "DB_SERVICE_PORT"), Some("5432"));
        assert_eq!(lookup(&env, "DB_PORT"), Some("tcp://10.96.0.5:5432"));
        assert_eq!(lookup(&env, "DB_PORT_5432_TCP_PROTO"), Some("tcp"));
        assert_eq!(env.len(), 2 + 1 + 4);
    }

    #[test]
    fn only_the_pods_namespace_and_only_services_with_a_cluster_ip() {
        let services = [
            svc("shop", "cart", "10.96.0.20", json!([{"port": 8080}])),
            svc("other", "admin", "10.96.0.21", json!([{"port": 80}])),
            svc("shop", "headless", "None", json!([{"port": 80}])),
            svc("shop", "pending", "", json!([{"port": 80}])),
        ];
        let env = service_env(&services, "shop", true);
        let hosts: Vec<&str> = env
            .iter()
            .filter(|(n, _)| n.ends_with("_SERVICE_HOST"))
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(hosts, ["CART_SERVICE_HOST"]);
    }

    #[test]
    fn kubernetes_only_when_it_exists_and_also_without_links() {
        let mut services = vec![svc("shop", "cart", "10.96.0.20", json!([{"port": 8080}]))];
        let env = service_env(&services, "shop", true);
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), None);
        services.push(svc(
            "default",
            "kubernetes",
            "10.96.0.1",
            json!([{"name": "https", "port": 443}]),
        ));
        let env = service_env(&services, "shop", true);
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(lookup(&env, "KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        // enableServiceLinks: false drops the namespace's services, never `kubernetes`.
        let env = service_env(&services, "shop", false);
        assert_eq!(lookup(&env, "CART_SERVICE_HOST"), None);
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        // A `kubernetes` Service of another namespace is an ordinary one.
        let env = service_env(
            &[svc("shop", "kubernetes", "10.96.0.9", json!([{"port": 1}]))],
            "default",
            true,
        );
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), None);
    }

    #[test]
    fn sorted_by_name_and_ipv6_in_brackets() {
        let services = [
            svc("default", "zeta", "10.96.0.3", json!([{"port": 1}])),
            svc("default", "alpha", "fd00::10", json!([{"port": 80}])),
        ];
        let env = service_env(&services, "default", true);
        assert_eq!(env[0].0, "ALPHA_SERVICE_HOST");
        assert_eq!(lookup(&env, "ALPHA_PORT"), Some("tcp://[fd00::10]:80"));
        assert_eq!(lookup(&env, "ALPHA_PORT_80_TCP_ADDR"), Some("fd00::10"));
        assert_eq!(
            env.last().map(|(n, _)| n.as_str()),
            Some("ZETA_PORT_1_TCP_ADDR")
        );
    }

    #[test]
    fn the_cache_is_unread_until_replaced() {
        let cache = ServiceCache::default();
        assert!(cache.services_for("default").is_none());
        cache.replace(views(&[svc(
            "default",
            "a",
            "10.96.0.2",
            json!([{"port": 1}]),
        )]));
        assert_eq!(cache.services_for("default").map(|s| s.len()), Some(1));
    }

    #[test]
    fn a_pod_is_given_its_namespace_and_the_master_service_only() {
        let all = vec![
            svc("default", "kubernetes", "10.96.0.1", json!([{"port": 443}])),
            svc("default", "web", "10.96.0.2", json!([{"port": 80}])),
            svc("shop", "cart", "10.96.0.3", json!([{"port": 80}])),
            svc("shop", "web", "10.96.0.4", json!([{"port": 80}])),
            svc("zoo", "cart", "10.96.0.5", json!([{"port": 80}])),
        ];
        let cache = ServiceCache::default();
        cache.replace(views(&all));
        let names = |v: Option<Vec<Service>>| -> Vec<String> {
            let mut n: Vec<String> = v
                .unwrap_or_default()
                .into_iter()
                .map(|s| {
                    format!(
                        "{}/{}",
                        s.metadata.namespace.unwrap_or_default(),
                        s.metadata.name.unwrap_or_default()
                    )
                })
                .collect();
            n.sort();
            n
        };
        let shop = ["default/kubernetes", "shop/cart", "shop/web"];
        assert_eq!(names(cache.services_for("shop")), shop);
        assert_eq!(
            names(StaticServices(all.clone()).services_for("shop")),
            shop
        );
        assert_eq!(
            names(cache.services_for("default")),
            ["default/kubernetes", "default/web"]
        );
        // The variables are those the whole list gives.
        let env = service_env(
            &cache.services_for("shop").unwrap_or_default(),
            "shop",
            true,
        );
        assert_eq!(env, service_env(&all, "shop", true));
        assert_eq!(lookup(&env, "WEB_SERVICE_HOST"), Some("10.96.0.4"));
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
    }
}
