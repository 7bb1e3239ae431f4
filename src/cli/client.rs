//! A small blocking HTTP client for tend's API: bearer token, timeouts, and server errors
//! (Kubernetes `Status` objects) turned into one readable line.

use crate::api::{Kind, ObjectKey};
use crate::errors::{error_chain, root_cause};
use reqwest::blocking::{Client as Http, Response};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Where the server is and how to authenticate (global flags `--server`, `--token`).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub server: String,
    pub token: Option<String>,
    /// PEM CA certificate(s) to trust instead of the system's roots (`--ca`, `TEND_CA`).
    pub ca: Option<PathBuf>,
}

impl ClientOptions {
    /// The token given, else `admin.token` in `$TEND_STATE` or `/var/lib/tend` when readable:
    /// on the server's own machine the CLI then works with no flags.
    pub fn with_token_fallback(server: String, token: Option<String>) -> ClientOptions {
        let token = token.filter(|t| !t.trim().is_empty()).or_else(|| {
            let state = std::env::var_os("TEND_STATE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/tend"));
            std::fs::read_to_string(state.join("admin.token")).ok()
        });
        ClientOptions {
            server,
            token: token
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            ca: None,
        }
    }

    /// The same options, trusting only the CA certificates in `ca` (when given).
    pub fn with_ca(mut self, ca: Option<PathBuf>) -> ClientOptions {
        self.ca = ca;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach tend server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("unauthorized: {message} (give the admin token with --token or TEND_TOKEN)")]
    Unauthorized { message: String },
    /// The server answered with an error; `message` is its `Status.message`.
    #[error("{message}")]
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("bad response from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    /// The `--ca` file cannot be read or holds no certificate (the reason names it).
    #[error("{0}")]
    Ca(String),
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { code: 404, .. })
    }
}

/// A client of one tend server.
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
    base: Url,
    token: Option<String>,
}

impl Client {
    pub fn new(opts: &ClientOptions) -> Result<Client, ClientError> {
        Client::with_timeout(opts, Duration::from_secs(30))
    }

    /// A client whose requests give up after `timeout` (connecting: at most 5 s).
    pub fn with_timeout(opts: &ClientOptions, timeout: Duration) -> Result<Client, ClientError> {
        Client::build(opts, Some(timeout))
    }

    /// A client for answers read as they come (`tend logs -f`): connecting gives up after 5 s,
    /// reading never.
    pub fn streaming(opts: &ClientOptions) -> Result<Client, ClientError> {
        Client::build(opts, None)
    }

    fn build(opts: &ClientOptions, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let bad_url = |reason: String| ClientError::BadUrl {
            url: opts.server.clone(),
            reason,
        };
        let base = Url::parse(&opts.server).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad_url("the scheme must be http or https".into()));
        }
        let mut builder = Http::builder();
        if let Some(ca) = &opts.ca {
            for cert in crate::agent::client::read_ca(ca).map_err(ClientError::Ca)? {
                builder = builder.add_root_certificate(cert);
            }
            builder = builder.tls_built_in_root_certs(false);
        }
        let http = builder
            .connect_timeout(
                timeout.map_or(Duration::from_secs(5), |t| t.min(Duration::from_secs(5))),
            )
            .timeout(timeout)
            .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad_url(error_chain(&e)))?;
        Ok(Client {
            http,
            base,
            token: opts.token.clone(),
        })
    }

    /// The server URL, as given.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `GET path?query` as JSON.
    pub fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        self.request(Method::GET, path, query, None)
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, &[], Some(body))
    }

    /// `PUT path` with a JSON body (a replace, with the body's resourceVersion), answer as JSON.
    pub fn put_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::PUT, path, &[], Some(body))
    }

    /// One object. A 404 without a server message reads `deployment "x" not found`.
    pub fn get(&self, key: &ObjectKey) -> Result<Value, ClientError> {
        self.get_json(&key.path(), &[]).map_err(|e| match e {
            ClientError::Status {
                code: 404,
                reason,
                message,
            } if message.is_empty() => ClientError::Status {
                code: 404,
                reason,
                message: format!(
                    "{} {:?} not found",
                    key.kind.name().to_ascii_lowercase(),
                    key.name
                ),
            },
            e => e,
        })
    }

    /// The items of a list: in `namespace`, or across all namespaces with `None`.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Value>, ClientError> {
        let path = list_path(kind, namespace);
        let query: Vec<(&str, &str)> = if selector.is_empty() {
            Vec::new()
        } else {
            vec![("labelSelector", selector)]
        };
        let list = self.get_json(&path, &query)?;
        match list.get("items") {
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(_) => Err(ClientError::BadResponse {
                url: self.url_text(&path),
                reason: "\"items\" is not an array".into(),
            }),
        }
    }

    fn url_text(&self, path: &str) -> String {
        format!("{}{path}", self.server())
    }

    /// `GET path?query` with the body left to read (a log, endless when followed).
    pub fn get_stream(&self, path: &str, query: &[(&str, &str)]) -> Result<Response, ClientError> {
        let resp = self.send(Method::GET, path, query, None)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        Err(status_error(status, &text))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let resp = self.send(method, path, query, body)?;
        self.answer(path, resp)
    }

    fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base_path}{path}"));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self
            .http
            .request(method, url)
            .header("Accept", "application/json");
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                ClientError::Unreachable {
                    url: self.server().to_string(),
                    reason: root_cause(&e),
                }
            } else {
                ClientError::BadResponse {
                    url: self.url_text(path),
                    reason: error_chain(&e),
                }
            }
        })
    }

    fn answer(&self, path: &str, resp: Response) -> Result<Value, ClientError> {
        let status = resp.status();
        let text = resp.text().map_err(|e| ClientError::BadResponse {
            url: self.url_text(path),
            reason: error_chain(&e),
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| ClientError::BadResponse {
                url: self.url_text(path),
                reason: format!("not JSON: {e}"),
            });
        }
        Err(status_error(status, &text))
    }
}

/// The REST path of a list: `/apis/apps/v1/namespaces/NS/deployments` or `/api/v1/pods`.
pub fn list_path(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if kind.namespaced() => {
            format!("{}/namespaces/{ns}/{}", kind.api_prefix(), kind.plural())
        }
        _ => format!("{}/{}", kind.api_prefix(), kind.plural()),
    }
}

/// An error answer, from its Kubernetes `Status` body when it has one.
fn status_error(status: StatusCode, body: &str) -> ClientError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut message = field("message");
    if message.is_empty() && parsed.is_none() {
        message = body.trim().chars().take(200).collect();
    }
    if status == StatusCode::UNAUTHORIZED {
        if message.is_empty() {
            message = "the server refused the token".into();
        }
        return ClientError::Unauthorized { message };
    }
    if message.is_empty() && status != StatusCode::NOT_FOUND {
        message = format!("the server answered {status}");
    }
    ClientError::Status {
        code: status.as_u16(),
        reason: field("reason"),
        message: message.replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_paths() {
        assert_eq!(
            list_path(Kind::Deployment, Some("default")),
            "/apis/apps/v1/namespaces/default/deployments"
        );
        assert_eq!(list_path(Kind::Pod, None), "/api/v1/pods");
        assert_eq!(list_path(Kind::Node, Some("default")), "/api/v1/nodes");
        assert_eq!(
            list_path(Kind::Revision, Some("x")),
            "/apis/tend.dev/v1/revisions"
        );
    }

    #[test]
    fn status_bodies_become_one_line() {
        let body = r#"{"kind":"Status","status":"Failure","message":"deployment \"x\" not found","reason":"NotFound","code":404}"#;
        let e = status_error(StatusCode::NOT_FOUND, body);
        assert_eq!(e.to_string(), "deployment \"x\" not found");
        assert!(e.is_not_found());
        let e = status_error(StatusCode::UNAUTHORIZED, "");
        assert!(e.to_string().starts_with("unauthorized: "));
        let e = status_error(StatusCode::INTERNAL_SERVER_ERROR, "boom\nagain");
        assert_eq!(e.to_string(), "boom again");
    }

    #[test]
    fn bad_server_urls_are_refused() {
        let opts = ClientOptions {
            server: "localhost:7443".into(),
            token: None,
            ca: None,
        };
        assert!(Client::new(&opts).is_err());
    }
}
