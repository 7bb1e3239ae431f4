//! The object model: kinds, keys, metadata helpers and label selectors, shared by every stage.

pub mod pod;
pub mod selector;

use serde_json::Value;
use std::fmt;

/// Label marking objects tend manages (pruned when they leave the source).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tend";
/// Annotation naming the file an object came from, relative to the source root.
pub const SOURCE_FILE_ANNOTATION: &str = "tend.dev/source-file";
/// Annotation naming the revision that last changed an object.
pub const SOURCE_REVISION_ANNOTATION: &str = "tend.dev/source-revision";

/// Every kind tend stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    Deployment,
    ReplicaSet,
    Pod,
    Service,
    Endpoints,
    EndpointSlice,
    Event,
    Revision,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Node,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::Pod,
        Kind::Service,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::Event,
        Kind::Revision,
    ];

    /// The `kind` field of objects of this kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Event => "Event",
            Kind::Revision => "Revision",
        }
    }

    /// The `apiVersion` objects of this kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::ReplicaSet => "apps/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Revision => "tend.dev/v1",
            _ => "v1",
        }
    }

    /// The REST path prefix (API group) of this kind: `/api/v1` or `/apis/GROUP/VERSION`.
    pub fn api_prefix(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::ReplicaSet => "/apis/apps/v1",
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1",
            Kind::Revision => "/apis/tend.dev/v1",
            _ => "/api/v1",
        }
    }

    /// The plural resource name used in REST paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Deployment => "deployments",
            Kind::ReplicaSet => "replicasets",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Endpoints => "endpoints",
            Kind::EndpointSlice => "endpointslices",
            Kind::Event => "events",
            Kind::Revision => "revisions",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Revision)
    }

    /// Parses kubectl's names and short names (`deploy`, `po`, `svc`, `rev`, ...).
    pub fn from_cli(s: &str) -> Option<Kind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "nodes" | "node" | "no" => Kind::Node,
            "deployments" | "deployment" | "deploy" => Kind::Deployment,
            "replicasets" | "replicaset" | "rs" => Kind::ReplicaSet,
            "pods" | "pod" | "po" => Kind::Pod,
            "services" | "service" | "svc" => Kind::Service,
            "endpoints" | "ep" => Kind::Endpoints,
            "endpointslices" | "endpointslice" => Kind::EndpointSlice,
            "events" | "event" | "ev" => Kind::Event,
            "revisions" | "revision" | "rev" => Kind::Revision,
            _ => return None,
        })
    }

    /// Parses a plural resource name from a REST path.
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }

    /// Parses the `kind` field of an object.
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        let namespace = if kind.namespaced() { namespace } else { "" };
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of a Kubernetes-shaped JSON object (`kind`, `metadata.namespace`, `metadata.name`).
    pub fn of(object: &Value) -> Option<Self> {
        let kind = Kind::from_name(object.get("kind")?.as_str()?)?;
        let meta = object.get("metadata")?;
        let name = meta.get("name")?.as_str()?;
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        Some(ObjectKey::new(kind, ns, name))
    }

    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped kinds: the storage key.
    pub fn storage_key(&self) -> String {
        if self.kind.namespaced() {
            format!("{}/{}/{}", self.kind.name(), self.namespace, self.name)
        } else {
            format!("{}/{}", self.kind.name(), self.name)
        }
    }

    /// The REST path of this object.
    pub fn path(&self) -> String {
        if self.kind.namespaced() {
            format!(
                "{}/namespaces/{}/{}/{}",
                self.kind.api_prefix(),
                self.namespace,
                self.kind.plural(),
                self.name
            )
        } else {
            format!(
                "{}/{}/{}",
                self.kind.api_prefix(),
                self.kind.plural(),
                self.name
            )
        }
    }
}

impl fmt::Display for ObjectKey {
    /// kubectl style: `deployment/xgp-web` (namespace shown only when not `default`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.name().to_ascii_lowercase();
        if self.kind.namespaced() && self.namespace != "default" {
            write!(f, "{kind}/{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{kind}/{}", self.name)
        }
    }
}

/// Read-only accessors for the metadata of a JSON object.
pub trait ObjectMeta {
    fn meta_str(&self, field: &str) -> Option<&str>;
    fn labels(&self) -> Option<&serde_json::Map<String, Value>>;
    fn annotation(&self, key: &str) -> Option<&str>;
    fn resource_version(&self) -> u64;
}

impl ObjectMeta for Value {
    fn meta_str(&self, field: &str) -> Option<&str> {
        self.get("metadata")?.get(field)?.as_str()
    }
    fn labels(&self) -> Option<&serde_json::Map<String, Value>> {
        self.get("metadata")?.get("labels")?.as_object()
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.get("metadata")?.get("annotations")?.get(key)?.as_str()
    }
    fn resource_version(&self) -> u64 {
        self.meta_str("resourceVersion")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// The current time as an RFC 3339 string with second precision, as Kubernetes writes it.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}
