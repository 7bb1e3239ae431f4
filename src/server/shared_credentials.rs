//! Node credentials shared by the control planes of one etcd store: an agent registers with
//! one replica and then talks to whichever answers, so every replica must know its credential.
//! Each replica publishes the digest it issues under `/tend-node-credentials/NODE` (the
//! digest only, as in `node-credentials.json`: the value is no key to the cluster), loads them
//! all at start and follows the prefix with an etcd watch.

use super::credentials::{NodeCredentials, SharedDigests, digest_text, parse_digest_text};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The etcd prefix of the digests: outside `/tend/`, where the store keeps objects.
pub const PREFIX: &str = "/tend-node-credentials/";

/// How long publishing a digest may take before the registration fails.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes digests to etcd from the blocking thread `NodeCredentials::issue` runs on.
pub struct EtcdDigests {
    client: etcd_client::Client,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for EtcdDigests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EtcdDigests")
    }
}

impl EtcdDigests {
    /// Must be called inside the runtime the publications will run on.
    pub fn new(client: etcd_client::Client) -> EtcdDigests {
        EtcdDigests {
            client,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl SharedDigests for EtcdDigests {
    fn publish(&self, node: &str, digest: &[u8; 32]) -> Result<(), String> {
        let mut client = self.client.clone();
        let key = format!("{PREFIX}{node}");
        let value = digest_text(digest);
        self.runtime.block_on(async move {
            match tokio::time::timeout(PUBLISH_TIMEOUT, client.put(key, value, None)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer from etcd in {PUBLISH_TIMEOUT:?}")),
            }
        })
    }
}

/// The digests under the prefix and the revision they were read at.
async fn load(
    client: &mut etcd_client::Client,
) -> Result<(BTreeMap<String, [u8; 32]>, i64), etcd_client::Error> {
    let answer = client
        .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    let revision = answer.header().map_or(0, |h| h.revision());
    Ok((parse(answer.kvs()), revision))
}

fn parse(kvs: &[etcd_client::KeyValue]) -> BTreeMap<String, [u8; 32]> {
    kvs.iter()
        .filter_map(|kv| {
            let node = std::str::from_utf8(kv.key()).ok()?.strip_prefix(PREFIX)?;
            let digest = parse_digest_text(std::str::from_utf8(kv.value()).ok()?)?;
            Some((node.to_string(), digest))
        })
        .collect()
}

/// Shares `nodes` through etcd: loads every published digest (before the API answers, so a
/// node registered with another replica is known at once), then follows new ones until `stop`.
pub async fn share(
    client: etcd_client::Client,
    nodes: Arc<NodeCredentials>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut reader = client.clone();
    let (digests, revision) = load(&mut reader)
        .await
        .map_err(|e| anyhow::anyhow!("reading the node credentials from etcd: {e}"))?;
    nodes.adopt(digests)?;
    nodes.share(Arc::new(EtcdDigests::new(client)));
    Ok(tokio::spawn(follow(reader, nodes, revision, stop)))
}

async fn follow(
    mut client: etcd_client::Client,
    nodes: Arc<NodeCredentials>,
    mut revision: i64,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let watched = async {
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = client.watch(PREFIX, Some(options)).await?;
            while let Some(answer) = stream.message().await? {
                if answer.canceled() {
                    break;
                }
                let puts: Vec<etcd_client::KeyValue> = answer
                    .events()
                    .iter()
                    .filter(|e| e.event_type() == etcd_client::EventType::Put)
                    .filter_map(|e| e.kv().cloned())
                    .collect();
                if let Some(last) = puts.last() {
                    revision = revision.max(last.mod_revision());
                }
                if let Err(e) = nodes.adopt(parse(&puts)) {
                    tracing::warn!("keeping a node credential from etcd: {e}");
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        tokio::select! {
            ended = watched => if let Err(e) = ended {
                tracing::warn!("following the node credentials in etcd: {e}");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        // The watch ended (etcd restarted, or compacted past `revision`): read everything
        // again, then watch from there.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match load(&mut client).await {
            Ok((digests, now)) => {
                revision = now;
                if let Err(e) = nodes.adopt(digests) {
                    tracing::warn!("keeping the node credentials from etcd: {e}");
                }
            }
            Err(e) => tracing::warn!("reading the node credentials from etcd: {e}"),
        }
    }
}
