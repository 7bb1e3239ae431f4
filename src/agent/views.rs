//! What the agent keeps of every Service and every Endpoints of the cluster: only the fields
//! it reads (the Service proxy's [`super::lb::model::ServiceInput::from_view`] and the
//! containers' Service variables, [`super::services::service_env`]).
//!
//! Why: the informers ([`super::informer`]) hold every Service and Endpoints of the cluster
//! for as long as the agent runs. As full `k8s_openapi` objects (metadata with uid,
//! resourceVersion, timestamps, labels and annotations; each endpoint address with its
//! `targetRef`), 2,000 Services and their Endpoints took ~5-6 MB of the agent's heap; these
//! views take a fraction of it (docs/performance.md). They deserialize from the same JSON
//! with the same field names and the same required fields, so an object the agent could read
//! before is read the same way now, and the unread fields are simply not kept.

use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde::{Deserialize, Serialize};

/// `metadata.namespace` and `metadata.name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A Service: its namespace, name and the parts of its spec the agent reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServiceSpecView>,
}

/// `spec` of a Service (the fields of `k8s_openapi`'s `ServiceSpec` the agent reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpecView {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP", default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ServicePortView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<AffinityConfigView>,
}

/// One of `spec.ports` (`port` is required by the API; `k8s_openapi` reads a missing one as
/// 0, and so does this).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
}

/// `spec.sessionAffinityConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityConfigView {
    #[serde(rename = "clientIP", default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpView>,
}

/// `spec.sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// An Endpoints: its subsets' ready addresses and ports (`notReadyAddresses`, hostnames,
/// node names and target references are not kept: nothing on the node reads them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsView {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsets: Option<Vec<SubsetView>>,
}

/// One of `subsets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsetView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<AddressView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<EndpointPortView>>,
}

/// One of `subsets[].addresses` (`ip` is required by the API; missing, it reads as "", as
/// in `k8s_openapi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    #[serde(default)]
    pub ip: String,
}

/// One of `subsets[].ports` (`port` as in [`ServicePortView`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPortView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub port: i32,
}

/// Objects an informer can key by namespace and name without their JSON.
pub trait Keyed {
    fn key(&self) -> (String, String);
}

fn key_of(meta: &Meta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Keyed for ServiceView {
    fn key(&self) -> (String, String) {
        key_of(&self.metadata)
    }
}

impl Keyed for EndpointsView {
    fn key(&self) -> (String, String) {
        key_of(&self.metadata)
    }
}

/// Why an object could not be seen through a view (a `k8s_openapi` object always can; the
/// error exists so that no conversion panics).
#[derive(Debug, thiserror::Error)]
#[error("converting {what}: {source}")]
pub struct ViewError {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// `from` as `To` through their common JSON form: the conversion the wire makes.
fn convert<From: Serialize, To: serde::de::DeserializeOwned>(
    from: &From,
    what: &'static str,
) -> Result<To, ViewError> {
    serde_json::to_value(from)
        .and_then(serde_json::from_value)
        .map_err(|source| ViewError { what, source })
}

impl ServiceView {
    /// The view of a full Service (tests, benches and callers holding `k8s_openapi` types).
    pub fn from_k8s(service: &Service) -> Result<Self, ViewError> {
        convert(service, "a Service to its view")
    }

    /// The view as a `k8s_openapi` Service, only the viewed fields set (for
    /// [`super::services::service_env`], which reads those).
    pub fn to_k8s(&self) -> Service {
        use k8s_openapi::api::core::v1::{
            ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        Service {
            metadata: ObjectMeta {
                namespace: self.metadata.namespace.clone(),
                name: self.metadata.name.clone(),
                ..ObjectMeta::default()
            },
            spec: self.spec.as_ref().map(|s| ServiceSpec {
                type_: s.type_.clone(),
                cluster_ip: s.cluster_ip.clone(),
                ports: s.ports.as_ref().map(|ports| {
                    ports
                        .iter()
                        .map(|p| ServicePort {
                            name: p.name.clone(),
                            protocol: p.protocol.clone(),
                            port: p.port,
                            node_port: p.node_port,
                            ..ServicePort::default()
                        })
                        .collect()
                }),
                session_affinity: s.session_affinity.clone(),
                session_affinity_config: s.session_affinity_config.as_ref().map(|c| {
                    SessionAffinityConfig {
                        client_ip: c.client_ip.as_ref().map(|c| ClientIPConfig {
                            timeout_seconds: c.timeout_seconds,
                        }),
                    }
                }),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }
}

impl EndpointsView {
    /// The view of a full Endpoints.
    pub fn from_k8s(endpoints: &Endpoints) -> Result<Self, ViewError> {
        convert(endpoints, "an Endpoints to its view")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service_json() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "resourceVersion": "7", "labels": {"a": "b"},
                         "annotations": {"note": "x".repeat(1000)}},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                "targetPort": 8080, "nodePort": 30080}],
                     "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
            "status": {"loadBalancer": {}},
        })
    }

    #[test]
    fn a_service_view_keeps_what_the_agent_reads_and_drops_the_rest() {
        let view: ServiceView = serde_json::from_value(service_json()).expect("view");
        assert_eq!(view.key(), ("shop".to_string(), "web".to_string()));
        let spec = view.spec.as_ref().expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        let ports = spec.ports.as_deref().unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port, ports[0].node_port),
            (Some("http"), 80, Some(30080))
        );
        assert_eq!(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds),
            Some(60)
        );
        // The same view from the full object, and back: the viewed fields survive.
        let full: Service = serde_json::from_value(service_json()).expect("service");
        assert_eq!(ServiceView::from_k8s(&full).expect("from"), view);
        let back = view.to_k8s();
        assert_eq!(ServiceView::from_k8s(&back).expect("again"), view);
        assert_eq!(back.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            back.spec.and_then(|s| s.cluster_ip).as_deref(),
            Some("10.96.0.10")
        );
        assert!(back.metadata.annotations.is_none(), "not kept");
    }

    #[test]
    fn an_endpoints_view_keeps_ready_addresses_and_ports() {
        let value = json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{
                "addresses": [{"ip": "10.244.1.2", "nodeName": "n1",
                               "targetRef": {"kind": "Pod", "name": "web-1", "uid": "u"}}],
                "notReadyAddresses": [{"ip": "10.244.1.3"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }],
        });
        let view: EndpointsView = serde_json::from_value(value.clone()).expect("view");
        let full: Endpoints = serde_json::from_value(value).expect("endpoints");
        assert_eq!(EndpointsView::from_k8s(&full).expect("from"), view);
        let subset = &view.subsets.as_deref().unwrap_or_default()[0];
        let ips: Vec<&str> = subset
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ips, ["10.244.1.2"]);
        assert_eq!(subset.ports.as_deref().unwrap_or_default()[0].port, 8080);
    }

    #[test]
    fn a_view_refuses_what_a_full_object_refuses_and_reads_the_rest_alike() {
        for bad in [
            json!({"metadata": {"name": "a"}, "spec": {"ports": "no"}}),
            json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": "80"}]}}),
            json!({"metadata": {"name": "a"}, "spec": {"clusterIP": 5}}),
        ] {
            assert!(serde_json::from_value::<Service>(bad.clone()).is_err());
            assert!(
                serde_json::from_value::<ServiceView>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        for bad in [
            json!({"metadata": {"name": "a"}, "subsets": [{"addresses": [{"ip": 1}]}]}),
            json!({"metadata": {"name": "a"}, "subsets": [{"ports": [{"port": -1.5}]}]}),
        ] {
            assert!(serde_json::from_value::<Endpoints>(bad.clone()).is_err());
            assert!(
                serde_json::from_value::<EndpointsView>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        // A missing required field reads as its default in both.
        let service = json!({"metadata": {"name": "a"}, "spec": {"ports": [{"name": "p"}]}});
        let full: Service = serde_json::from_value(service.clone()).expect("service");
        let view: ServiceView = serde_json::from_value(service).expect("view");
        assert_eq!(ServiceView::from_k8s(&full).expect("from"), view);
        assert_eq!(view.spec.and_then(|s| s.ports).map(|p| p[0].port), Some(0));
        let endpoints = json!({"metadata": {"name": "a"},
                               "subsets": [{"addresses": [{"hostname": "h"}], "ports": [{}]}]});
        let full: Endpoints = serde_json::from_value(endpoints.clone()).expect("endpoints");
        let view: EndpointsView = serde_json::from_value(endpoints).expect("view");
        assert_eq!(EndpointsView::from_k8s(&full).expect("from"), view);
    }
}
