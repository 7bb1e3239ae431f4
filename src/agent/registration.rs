//! Registering a node and its heartbeats, shared by `tend agent` and `tend sim-node`: the
//! Node is created with the agent's labels only when it does not exist (an admin's labels
//! survive restarts); afterwards only its status is written.

use super::client::{AgentClient, ClientError, with_status};
use super::{node_object, node_status, now_millis};
use serde_json::{Map, Value};

pub struct Registration {
    pub client: AgentClient,
    pub name: String,
    pub address: std::net::IpAddr,
    /// `kubeletVersion` the node reports.
    pub version: String,
    /// `containerRuntimeVersion` the node reports.
    pub runtime: String,
    /// The port of the node's log endpoint, advertised in its status.
    pub port: Option<u16>,
    pub labels: Map<String, Value>,
    pub capacity: Map<String, Value>,
}

impl Registration {
    fn status(&self, previous: Option<&Value>) -> Value {
        let identity = super::NodeIdentity {
            name: &self.name,
            address: self.address,
            version: &self.version,
            runtime: &self.runtime,
            port: self.port,
        };
        node_status(&identity, &self.capacity, previous, &now_millis())
    }

    /// Creates the Node when it does not exist, then heartbeats; returns its pod CIDR, once
    /// the control plane has given it one.
    pub async fn register(&self) -> Result<Option<String>, ClientError> {
        let object = node_object(&self.name, &self.labels, self.status(None));
        if self.client.create_node(&object).await?.is_none() {
            tracing::info!(node = %self.name, "the Node exists; keeping its labels");
        }
        self.heartbeat().await
    }

    /// Writes the node's status (registering it again if an admin deleted it); returns its
    /// pod CIDR when it has one.
    pub async fn heartbeat(&self) -> Result<Option<String>, ClientError> {
        let current = match self.client.get_node(&self.name).await {
            Ok(node) => node,
            Err(e) if e.is_not_found() => {
                let object = node_object(&self.name, &self.labels, self.status(None));
                self.client.create_node(&object).await?;
                self.client.get_node(&self.name).await?
            }
            Err(e) => return Err(e),
        };
        let status = self.status(current.get("status"));
        self.client
            .put_node_status(&with_status(&current, status))
            .await?;
        Ok(current
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .map(str::to_string))
    }
}
