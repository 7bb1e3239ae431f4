//! The HTTP API (axum): Kubernetes-style REST paths over the store (list, get, watch, create,
//! replace, status, delete), bearer-token authentication and authorisation, the signed git
//! webhook, pod logs proxied from the nodes' agents ([`logs`]), and the bounds that keep one
//! client from starving the others.

pub mod audit;
pub mod auth;
pub mod credentials;
pub mod fields;
pub mod leader;
pub mod limits;
pub mod listen;
pub mod logs;
pub mod node_auth;
pub mod objects;
pub mod path;
pub mod register;
pub mod rollout;
pub mod shared_credentials;
pub mod status;
pub mod tls;
pub mod tokens;
pub mod watch;
use crate::api::Kind;
use crate::api::selector::Selector;
use crate::source::webhook;
use crate::store::Store;
use auth::Decision;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use fields::FieldSelector;
use limits::{RateLimiter, WatchSlots};
use path::Route;
use serde_json::{Value, json};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub use limits::Limits;
pub use status::ApiError;
pub use tokens::{Identity, Tokens};
pub use watch::ShutdownSignal;

/// What the API serves from.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub tokens: Tokens,
    /// Secret of `POST /api/v1/hooks/git`; `None` disables the hook (404).
    pub webhook_secret: Option<Vec<u8>>,
    /// Asks the source to fetch now (a full channel means a fetch is already pending).
    pub source_refresh: tokio::sync::mpsc::Sender<()>,
    /// Edits the source for rollout commands; `None` makes them answer 503.
    pub source_writer: Option<Arc<dyn crate::source::write::SourceWriter>>,
}

/// The state handlers see: the API state and the bounds' bookkeeping.
struct Shared {
    api: Arc<ApiState>,
    limits: Limits,
    rate: RateLimiter,
    in_flight: Arc<Semaphore>,
    /// Keyed by identity and client address: nodes sharing the join token each get a cap.
    watch_slots: WatchSlots<(Identity, IpAddr)>,
}

/// The API with the default [`Limits`].
pub fn router(state: Arc<ApiState>) -> Router {
    router_with_limits(state, Limits::default())
}

pub fn router_with_limits(state: Arc<ApiState>, limits: Limits) -> Router {
    let shared = Arc::new(Shared {
        api: state,
        rate: RateLimiter::new(limits.rate_per_second, limits.rate_burst),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        watch_slots: WatchSlots::new(limits.max_watches_per_client),
        limits,
    });
    Router::new()
        .route(rollout::ROUTE, axum::routing::any(rollout::handle))
        .route(logs::ROUTE, axum::routing::any(logs::handle))
        .fallback(handle)
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), admit))
        .layer(middleware::from_fn(log_request))
        .with_state(shared)
}

/// Serves `router` on `listener` until `shutdown` completes, with the default connection
/// bounds; open watches then end, and requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, router, &Limits::default(), shutdown).await
}

/// [`serve`] with the connection bounds of `limits` (the time to send a request's head, the
/// open connections); give the router the same `limits` ([`router_with_limits`]).
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, router, limits, shutdown).await
}

/// One debug line per request.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// The rate per client address, the bound on requests in flight, and the request timeout
/// (which bounds a watch only until its stream starts).
async fn admit(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let client = client_address(&req);
    if !shared.rate.admit(client, Instant::now()) {
        return ApiError::too_many_requests(format!("too many requests from {client}; slow down"))
            .into_response();
    }
    let Ok(_permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
        return ApiError::too_many_requests("the server is busy; retry shortly").into_response();
    };
    let timeout = shared.limits.request_timeout;
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(format!(
            "the request took longer than {}s",
            timeout.as_secs()
        ))
        .into_response(),
    }
}

/// The client's address (the TCP peer); unspecified when the server was not given it.
fn client_address(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = path::parse(&path);
    match route {
        Some(Route::Healthz) => return healthz(&method),
        Some(Route::GitHook) => {
            return git_hook(&shared, req)
                .await
                .unwrap_or_else(IntoResponse::into_response);
        }
        _ => {}
    }
    let Some(identity) = auth::authenticate(&shared.api.tokens, req.headers()) else {
        return ApiError::unauthorized().into_response();
    };
    let Some(route) = route else {
        return ApiError::not_found(format!(
            "the server could not find the requested resource {path}"
        ))
        .into_response();
    };
    let field_selector = Query::<ListParams>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.field_selector);
    let req = match auth::authorize(&identity, &method, &route, field_selector.as_deref()) {
        Decision::Allow => req,
        Decision::Deny(reason) => return ApiError::forbidden(reason).into_response(),
        conditional => {
            let Identity::Node(node) = &identity else {
                return ApiError::forbidden(format!("the {identity} token may not do this"))
                    .into_response();
            };
            let limit = shared.limits.max_body_bytes;
            match register::resolve(&shared.api.store, conditional, node, req, limit).await {
                Ok(req) => req,
                Err(e) => return e.into_response(),
            }
        }
    };
    let response = dispatch(&shared, identity.clone(), route, req)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    // Status reports from nodes (heartbeats, pod status) come every few seconds per node:
    // logged at debug; every other write at info.
    if method != Method::GET && method != Method::HEAD {
        let status = response.status().as_u16();
        if method == Method::PUT && path.ends_with("/status") {
            tracing::debug!(who = %identity, %method, %path, status, "api write");
        } else {
            tracing::info!(who = %identity, %method, %path, status, "api write");
        }
    }
    response
}

fn healthz(method: &Method) -> Response {
    if *method == Method::GET || *method == Method::HEAD {
        "ok".into_response()
    } else {
        ApiError::method_not_allowed(method.as_str(), "/healthz").into_response()
    }
}

/// The query parameters of collection requests.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
}

/// For routes only the admin token may use: 401 without a valid token, 403 for another
/// one, saying what it may not `do_what`.
fn admin_only(
    shared: &Shared,
    headers: &axum::http::HeaderMap,
    do_what: &str,
) -> Result<(), ApiError> {
    match auth::authenticate(&shared.api.tokens, headers) {
        None => Err(ApiError::unauthorized()),
        Some(Identity::Admin) => Ok(()),
        Some(other) => Err(ApiError::forbidden(format!(
            "the {other} token may not {do_what}"
        ))),
    }
}

async fn dispatch(
    shared: &Shared,
    identity: Identity,
    route: Route,
    req: Request,
) -> Result<Response, ApiError> {
    let store = &shared.api.store;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let limit = shared.limits.max_body_bytes;
    match (route, method.clone()) {
        (Route::Version, Method::GET) => Ok(Json(version()).into_response()),
        (Route::Register, Method::POST) => {
            let body = limits::read_body(req.into_body(), limit).await?;
            register::register(&shared.api.tokens, &body).await
        }
        (Route::Collection { kind, namespace }, Method::GET) => {
            let params = Query::<ListParams>::try_from_uri(req.uri())
                .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?
                .0;
            let selector = Selector::parse(params.label_selector.as_deref().unwrap_or_default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let fields =
                FieldSelector::parse(kind, params.field_selector.as_deref().unwrap_or_default())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if matches!(params.watch.as_deref(), Some("true" | "1")) {
                let shutdown = req.extensions().get::<ShutdownSignal>().cloned();
                let client = client_address(&req);
                let filter = watch::WatchFilter {
                    kind,
                    namespace,
                    selector,
                    fields,
                };
                return open_watch(shared, (identity, client), filter, &params, shutdown).await;
            }
            let body = objects::list(store, kind, namespace, selector, fields).await?;
            Ok((
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response())
        }
        (
            Route::Collection {
                kind: Kind::Event,
                namespace: Some(namespace),
            },
            Method::POST,
        ) => {
            let body = limits::read_body(req.into_body(), limit).await?;
            let event = objects::record_event(store, &namespace, &body).await?;
            Ok((StatusCode::CREATED, Json(event)).into_response())
        }
        (Route::Collection { kind, namespace }, Method::POST) => {
            let namespace = match (kind.namespaced(), namespace) {
                (true, Some(ns)) => ns,
                (false, _) => String::new(),
                (true, None) => return Err(ApiError::method_not_allowed("POST", &path)),
            };
            let body = limits::read_body(req.into_body(), limit).await?;
            let object = objects::create(store, kind, &namespace, &body).await?;
            // The audit log names what was created (the path does not).
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            Ok((
                StatusCode::CREATED,
                Extension(audit::AuditName(name)),
                Json(object),
            )
                .into_response())
        }
        (Route::Object(key) | Route::Status(key), Method::GET) => {
            Ok(Json(objects::get(store, key).await?).into_response())
        }
        (Route::Object(key), Method::PUT) => {
            let body = limits::read_body(req.into_body(), limit).await?;
            Ok(Json(objects::replace(store, key, &body).await?).into_response())
        }
        (Route::Status(key), Method::PUT) => {
            let body = limits::read_body(req.into_body(), limit).await?;
            Ok(Json(objects::replace_status(store, key, &body).await?).into_response())
        }
        (Route::Object(key), Method::DELETE) => {
            let body = limits::read_body(req.into_body(), limit).await?;
            Ok(Json(objects::delete(store, key, &body).await?).into_response())
        }
        (_, method) => Err(ApiError::method_not_allowed(method.as_str(), &path)),
    }
}

async fn open_watch(
    shared: &Shared,
    (identity, client): (Identity, IpAddr),
    filter: watch::WatchFilter,
    params: &ListParams,
    shutdown: Option<ShutdownSignal>,
) -> Result<Response, ApiError> {
    let resource_version = match params.resource_version.as_deref() {
        None | Some("") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion {rv:?} is not a number"))
        })?),
    };
    let slot = shared
        .watch_slots
        .try_take((identity.clone(), client))
        .ok_or_else(|| {
            ApiError::too_many_requests(format!(
                "the {identity} token already has {} open watches from {client}",
                shared.limits.max_watches_per_client
            ))
        })?;
    let start = watch::WatchStart {
        resource_version,
        timeout: params.timeout_seconds.map(Duration::from_secs),
    };
    watch::respond(&shared.api.store, filter, start, slot, shutdown).await
}

/// `POST /api/v1/hooks/git`: authenticated by the body's HMAC, not by a token.
async fn git_hook(shared: &Shared, req: Request) -> Result<Response, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed(
            req.method().as_str(),
            "/api/v1/hooks/git",
        ));
    }
    let Some(secret) = shared.api.webhook_secret.as_deref() else {
        return Err(ApiError::not_found(
            "no webhook secret is configured (--webhook-secret-file)",
        ));
    };
    let signature = req
        .headers()
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = limits::read_body(req.into_body(), shared.limits.max_body_bytes).await?;
    if let Err(e) = webhook::verify_signature(secret, &body, signature.as_deref()) {
        tracing::warn!(error = %e, "git webhook refused");
        // The signature is the hook's authentication: a missing or wrong one is a 401.
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!("git webhook: {e}"),
        ));
    }
    // A full channel means a fetch is already pending, which serves this hook too.
    let _ = shared.api.source_refresh.try_send(());
    tracing::info!(who = "webhook", "git webhook accepted; fetching");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "message": "fetch scheduled",
            "code": 202,
        })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn version() -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    json!({
        "major": parts.next().unwrap_or("0"),
        "minor": parts.next().unwrap_or("0"),
        "gitVersion": format!("v{version}"),
        "version": version,
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// The REST path of a collection (for clients): `{prefix}/namespaces/{ns}/{plural}` or
/// `{prefix}/{plural}`.
pub fn collection_path(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if kind.namespaced() => {
            format!("{}/namespaces/{ns}/{}", kind.api_prefix(), kind.plural())
        }
        _ => format!("{}/{}", kind.api_prefix(), kind.plural()),
    }
}
