//! A node's own credential: obtained once with the join token (which may do nothing else),
//! kept in the agent's state directory (mode 0600) and used for every request afterwards, also
//! after a restart. A kubelet does the same with its bootstrap token and client certificate.

use super::client::{AgentClient, ClientError, backoff};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// Where an agent keeps what it needs to reach the API as its node.
#[derive(Debug, Clone)]
pub struct NodeAccess {
    pub servers: Vec<String>,
    /// The node's credential (a bearer token bound to its name).
    pub credential: String,
    /// PEM CA certificates the servers' TLS certificates must chain to.
    pub ca: Option<PathBuf>,
}

impl NodeAccess {
    /// A new client of the API as this node.
    pub fn client(&self) -> Result<AgentClient, ClientError> {
        AgentClient::with_ca(
            self.servers.clone(),
            self.credential.clone(),
            self.ca.as_deref(),
        )
    }
}

/// The file under the agent's state directory holding node `name`'s credential.
pub fn credential_path(state: &Path, name: &str) -> PathBuf {
    state.join(format!("node-{name}.credential"))
}

/// The node's credential: the one stored under `state` when the server still knows it, else a
/// new one registered with the join token (and stored, mode 0600). `state: None` keeps it in
/// memory only (simulated nodes register again on each start). Retries until a server
/// answers; `None` when `shutdown` comes first.
pub async fn obtain(
    servers: &[String],
    join_token_file: &Path,
    ca: Option<&Path>,
    state: Option<&Path>,
    name: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<NodeAccess>> {
    let access = |credential: String| NodeAccess {
        servers: servers.to_vec(),
        credential,
        ca: ca.map(Path::to_path_buf),
    };
    let stored = state.map(|dir| credential_path(dir, name));
    let mut failures = 0;
    loop {
        match try_obtain(servers, join_token_file, ca, stored.as_deref(), name).await {
            Ok(credential) => return Ok(Some(access(credential))),
            Err(e) => tracing::warn!(node = %name, "obtaining the node's credential: {e}"),
        }
        let wait = backoff(failures);
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = super::stopped(shutdown) => return Ok(None),
        }
    }
}

async fn try_obtain(
    servers: &[String],
    join_token_file: &Path,
    ca: Option<&Path>,
    stored: Option<&Path>,
    name: &str,
) -> anyhow::Result<String> {
    if let Some(path) = stored
        && let Ok(text) = fs::read_to_string(path)
        && !text.trim().is_empty()
    {
        let credential = text.trim().to_string();
        let client = AgentClient::with_ca(servers.to_vec(), credential.clone(), ca)?;
        match client.get_node(name).await {
            Ok(_) => return Ok(credential),
            Err(e) if e.is_not_found() => return Ok(credential),
            // The server no longer knows it (its state was reset, or the name was registered
            // again elsewhere): register anew.
            Err(e) if e.code() == Some(401) => {
                tracing::info!(node = %name, "the stored credential was refused; registering again");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let join = AgentClient::with_ca(servers.to_vec(), read_token(join_token_file)?, ca)?;
    let credential = join.register(name).await?;
    if let Some(path) = stored {
        write_private(path, &credential)?;
    }
    tracing::info!(node = %name, "registered with the join token; using the node's own credential");
    Ok(credential)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        anyhow::bail!("token file {}: the file is empty", path.display());
    }
    Ok(token)
}

/// Writes `text` to a private (0600) temporary file and renames it over `path`.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let context = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(context)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(context)?;
    file.write_all(text.as_bytes()).map_err(context)?;
    file.write_all(b"\n").map_err(context)?;
    file.sync_all().map_err(context)?;
    fs::rename(&tmp, path).map_err(context)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credentials_are_written_private_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = credential_path(dir.path(), "n1");
        write_private(&path, "first").expect("write");
        write_private(&path, "second").expect("rewrite");
        assert_eq!(fs::read_to_string(&path).expect("read"), "second\n");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
