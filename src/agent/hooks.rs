//! Container lifecycle hooks (`lifecycle.postStart`, `lifecycle.preStop`) as the kubelet runs
//! them: what a hook does ([`hook_action`], pure), running it ([`HookRunner`]: exec through
//! the container runtime, httpGet from the agent to the pod IP, sleep), and the two places
//! the pod sync calls: [`post_start`] right after a container starts, [`stop`] instead of a
//! bare SIGTERM/SIGKILL.
//!
//! The kubelet's rules kept here: a container is not reported Running until its postStart
//! hook returned, and a failed postStart kills it (FailedPostStartHook) for the restart
//! policy to decide; preStop runs only for a running container, before SIGTERM, and its time
//! counts against the grace period, of which at least 2 s are left for SIGTERM; an httpGet
//! hook fails only when no HTTP answer comes (any status code is a success).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::runtime::runc::{self, ContainerRuntime, RuntimeError, Status};

/// How long a postStart hook may take. The kubelet has no limit; one here keeps a stuck hook
/// from holding the pod's sync (and its deletion) forever.
pub const POST_START_TIMEOUT: Duration = Duration::from_secs(120);
/// What the kubelet always leaves for SIGTERM after preStop (`minimumGracePeriodInSeconds`).
pub const MIN_GRACE_AFTER_PRE_STOP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hook::PostStart => "postStart",
            Hook::PreStop => "preStop",
        })
    }
}

/// What a hook does, resolved against the container and the pod's IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    Exec {
        command: Vec<String>,
    },
    HttpGet {
        url: String,
        headers: Vec<(String, String)>,
    },
    Sleep {
        duration: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("container {container:?} {hook} hook: {reason}")]
    Invalid {
        container: String,
        hook: Hook,
        reason: String,
    },
    #[error("exec {command:?} exited with {code}: {output}")]
    Exit {
        command: Vec<String>,
        code: i32,
        output: String,
    },
    #[error("exec {command:?} did not finish within {timeout:?}")]
    Timeout {
        command: Vec<String>,
        timeout: Duration,
    },
    #[error("exec {command:?}: {source}")]
    Runtime {
        command: Vec<String>,
        source: Box<RuntimeError>,
    },
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
}

/// The container's `hook`, resolved: `None` when it has none. An httpGet goes to the pod IP
/// unless it names a host; a port is a number, a numeric string, a named container port, or
/// 80 when empty (the kubelet's `resolvePort`); the path gets its leading `/`.
pub fn hook_action(
    container: &Container,
    hook: Hook,
    pod_ip: Option<Ipv4Addr>,
) -> Result<Option<HookAction>, HookError> {
    let handler: Option<&LifecycleHandler> =
        container.lifecycle.as_ref().and_then(|l| match hook {
            Hook::PostStart => l.post_start.as_ref(),
            Hook::PreStop => l.pre_stop.as_ref(),
        });
    let Some(handler) = handler else {
        return Ok(None);
    };
    let invalid = |reason: String| HookError::Invalid {
        container: container.name.clone(),
        hook,
        reason,
    };
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(invalid("exec has no command".into()));
        }
        return Ok(Some(HookAction::Exec { command }));
    }
    if let Some(get) = &handler.http_get {
        let host = match get.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h.to_string(),
            None => pod_ip
                .ok_or_else(|| invalid("the pod has no IP yet".into()))?
                .to_string(),
        };
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(s) if s.is_empty() => 80,
            IntOrString::String(s) => match s.parse::<i32>() {
                Ok(p) => p,
                Err(_) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(s.as_str()))
                    .map(|p| p.container_port)
                    .ok_or_else(|| invalid(format!("no container port named {s:?}")))?,
            },
        };
        if !(1..=65535).contains(&port) {
            return Err(invalid(format!("port {port} is out of range")));
        }
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let path = get.path.clone().unwrap_or_default();
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let headers = get
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return Ok(Some(HookAction::HttpGet {
            url: format!("{scheme}://{host}:{port}{path}"),
            headers,
        }));
    }
    if let Some(sleep) = &handler.sleep {
        let seconds = u64::try_from(sleep.seconds)
            .map_err(|_| invalid(format!("sleep of {} seconds", sleep.seconds)))?;
        return Ok(Some(HookAction::Sleep {
            duration: Duration::from_secs(seconds),
        }));
    }
    if handler.tcp_socket.is_some() {
        return Err(invalid(
            "tcpSocket is not supported in lifecycle hooks (as in Kubernetes)".into(),
        ));
    }
    Err(invalid("no exec, httpGet or sleep".into()))
}

/// Runs hooks: the side effect behind [`post_start`] and [`stop`].
pub trait HookRunner: Send + Sync {
    /// Runs `action` for the container `id`, giving up after `timeout`.
    fn run(&self, id: &str, action: &HookAction, timeout: Duration) -> Result<(), HookError>;
}

/// The real hooks: exec through the container runtime, httpGet with an HTTP client from the
/// agent (which shares the node's network namespace, from which pod IPs are reachable), sleep
/// on the calling thread (a sync runs on a blocking thread of its own).
pub struct RuntimeHooks {
    runtime: Arc<dyn ContainerRuntime>,
}

impl RuntimeHooks {
    pub fn new(runtime: Arc<dyn ContainerRuntime>) -> Self {
        RuntimeHooks { runtime }
    }
}

impl HookRunner for RuntimeHooks {
    fn run(&self, id: &str, action: &HookAction, timeout: Duration) -> Result<(), HookError> {
        match action {
            HookAction::Exec { command } => {
                let out = self.runtime.exec(id, command, timeout).map_err(|source| {
                    HookError::Runtime {
                        command: command.clone(),
                        source: Box::new(source),
                    }
                })?;
                match out.exit_code {
                    Some(0) => Ok(()),
                    Some(code) => Err(HookError::Exit {
                        command: command.clone(),
                        code,
                        output: out.output.trim().to_string(),
                    }),
                    None => Err(HookError::Timeout {
                        command: command.clone(),
                        timeout,
                    }),
                }
            }
            HookAction::HttpGet { url, headers } => http_get(url, headers, timeout),
            HookAction::Sleep { duration } => {
                std::thread::sleep((*duration).min(timeout));
                Ok(())
            }
        }
    }
}

/// One GET; any HTTP answer is a success, as for the kubelet's lifecycle hooks. Certificates
/// are not verified (the kubelet does not either), proxies from the environment are not used.
fn http_get(url: &str, headers: &[(String, String)], timeout: Duration) -> Result<(), HookError> {
    let fail = |reason: String| HookError::Http {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .timeout(timeout)
        .build()
        .map_err(|e| fail(format!("building the HTTP client: {e}")))?;
    let mut request = client
        .get(url)
        .header("User-Agent", "kube-lifecycle/tend")
        .header("Accept", "*/*");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().map_err(|e| fail(e.to_string()))?;
    // Read the answer so that the server sees the request through.
    let _ = response.bytes();
    Ok(())
}

/// Hooks that record what they were asked and fail when told to (tests).
#[derive(Default)]
pub struct RecordingHooks {
    calls: Mutex<Vec<(String, HookAction)>>,
    /// Every hook fails while true.
    pub fail: Mutex<bool>,
}

impl RecordingHooks {
    pub fn calls(&self) -> Vec<(String, HookAction)> {
        lock(&self.calls).clone()
    }
}

impl HookRunner for RecordingHooks {
    fn run(&self, id: &str, action: &HookAction, _timeout: Duration) -> Result<(), HookError> {
        lock(&self.calls).push((id.to_string(), action.clone()));
        if *lock(&self.fail) {
            return Err(HookError::Http {
                url: format!("{action:?}"),
                reason: "told to fail".into(),
            });
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The grace left for SIGTERM after a preStop hook that took `spent` of `grace`: the rest,
/// but never less than [`MIN_GRACE_AFTER_PRE_STOP`] (the kubelet's `killContainer`).
/// E.g. grace 30 s, hook 5 s: 25 s; hook 29 s or 40 s: 2 s.
pub fn grace_after_pre_stop(grace: Duration, spent: Duration) -> Duration {
    grace.saturating_sub(spent).max(MIN_GRACE_AFTER_PRE_STOP)
}

/// Where a hook runs: the pod and container, for the runner and the log.
pub struct HookTarget<'a> {
    /// `namespace/name`, for the log.
    pub pod: &'a str,
    /// The container's spec; `None` when unknown (then there is no hook to run).
    pub container: Option<&'a Container>,
    /// The runtime id.
    pub id: &'a str,
    pub pod_ip: Option<Ipv4Addr>,
}

/// Runs the container's postStart hook after it started. When the hook fails the container
/// is stopped (its preStop included, as the kubelet's `killContainer` does) within `grace`,
/// logged as FailedPostStartHook, and the restart policy decides what follows from its exit.
/// Returns whether the hook succeeded (true when there is none).
pub fn post_start(
    runner: &dyn HookRunner,
    runtime: &dyn ContainerRuntime,
    target: &HookTarget,
    grace: Duration,
    poll: Duration,
) -> Result<bool, RuntimeError> {
    let Some(container) = target.container else {
        return Ok(true);
    };
    let result = hook_action(container, Hook::PostStart, target.pod_ip).and_then(|a| match a {
        Some(action) => runner.run(target.id, &action, POST_START_TIMEOUT),
        None => Ok(()),
    });
    let Err(e) = result else {
        return Ok(true);
    };
    tracing::warn!(
        pod = %target.pod,
        container = %container.name,
        reason = "FailedPostStartHook",
        "postStart hook failed, killing the container: {e}"
    );
    stop(runner, runtime, target, grace, poll)?;
    Ok(false)
}

/// Stops a container as the kubelet does: its preStop hook first when it runs and has one
/// (bounded by `grace`), then SIGTERM, then SIGKILL after what is left of `grace` (at least
/// [`MIN_GRACE_AFTER_PRE_STOP`]). A failed preStop is logged; the stop goes on. Returns the
/// exit code as [`runc::stop`] does.
pub fn stop(
    runner: &dyn HookRunner,
    runtime: &dyn ContainerRuntime,
    target: &HookTarget,
    grace: Duration,
    poll: Duration,
) -> Result<Option<i32>, RuntimeError> {
    let mut grace_left = grace;
    let container = target
        .container
        .filter(|c| c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()));
    let running = match container {
        Some(_) => runtime
            .state(target.id)?
            .is_some_and(|s| s.status == Status::Running),
        None => false,
    };
    if let Some(container) = container.filter(|_| running && !grace.is_zero()) {
        match hook_action(container, Hook::PreStop, target.pod_ip) {
            Ok(None) => {}
            Ok(Some(action)) => {
                let started = Instant::now();
                if let Err(e) = runner.run(target.id, &action, grace) {
                    tracing::warn!(
                        pod = %target.pod,
                        container = %container.name,
                        reason = "FailedPreStopHook",
                        "preStop hook failed: {e}"
                    );
                }
                grace_left = grace_after_pre_stop(grace, started.elapsed());
            }
            Err(e) => tracing::warn!(
                pod = %target.pod,
                container = %container.name,
                reason = "FailedPreStopHook",
                "{e}"
            ),
        }
    }
    runc::stop(runtime, target.id, grace_left, poll)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(lifecycle: serde_json::Value) -> Container {
        serde_json::from_value(json!({
            "name": "web", "image": "web:v1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "lifecycle": lifecycle,
        }))
        .expect("container")
    }

    const IP: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 244, 1, 2));

    #[test]
    fn exec_sleep_and_none() {
        let c = container(json!({
            "postStart": {"exec": {"command": ["sh", "-c", "touch /tmp/started"]}},
            "preStop": {"sleep": {"seconds": 3}},
        }));
        assert_eq!(
            hook_action(&c, Hook::PostStart, IP).expect("ok"),
            Some(HookAction::Exec {
                command: vec!["sh".into(), "-c".into(), "touch /tmp/started".into()]
            })
        );
        assert_eq!(
            hook_action(&c, Hook::PreStop, IP).expect("ok"),
            Some(HookAction::Sleep {
                duration: Duration::from_secs(3)
            })
        );
        let bare = container(json!({}));
        assert_eq!(hook_action(&bare, Hook::PreStop, IP).expect("ok"), None);
    }

    #[test]
    fn http_get_resolves_ports_host_and_path() {
        let url = |get: serde_json::Value, ip| match hook_action(
            &container(json!({"preStop": {"httpGet": get}})),
            Hook::PreStop,
            ip,
        ) {
            Ok(Some(HookAction::HttpGet { url, .. })) => Ok(url),
            Ok(other) => panic!("not an httpGet: {other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(
            url(json!({"port": 8080, "path": "/stop"}), IP),
            Ok("http://10.244.1.2:8080/stop".into())
        );
        assert_eq!(
            url(json!({"port": "http", "path": "quit"}), IP),
            Ok("http://10.244.1.2:8080/quit".into())
        );
        assert_eq!(
            url(
                json!({"port": "9000", "host": "127.0.0.1", "scheme": "HTTPS"}),
                IP
            ),
            Ok("https://127.0.0.1:9000/".into())
        );
        assert_eq!(
            url(json!({"port": ""}), IP),
            Ok("http://10.244.1.2:80/".into())
        );
        let missing = url(json!({"port": "admin"}), IP).expect_err("no such port");
        assert!(
            missing.contains("no container port named \"admin\""),
            "{missing}"
        );
        let no_ip = url(json!({"port": 80}), None).expect_err("no ip");
        assert!(no_ip.contains("no IP"), "{no_ip}");
    }

    #[test]
    fn tcp_socket_and_empty_handlers_are_errors() {
        let c = container(json!({"postStart": {"tcpSocket": {"port": 80}}}));
        assert!(hook_action(&c, Hook::PostStart, IP).is_err());
        let c = container(json!({"postStart": {"exec": {"command": []}}}));
        assert!(hook_action(&c, Hook::PostStart, IP).is_err());
    }

    #[test]
    fn pre_stop_time_counts_against_the_grace_period() {
        let s = Duration::from_secs;
        assert_eq!(grace_after_pre_stop(s(30), s(5)), s(25));
        assert_eq!(grace_after_pre_stop(s(30), s(29)), s(2));
        assert_eq!(grace_after_pre_stop(s(30), s(40)), s(2));
    }

    #[test]
    fn http_hook_succeeds_on_any_answer_and_fails_without_one() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).expect("read");
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .expect("write");
            request
        });
        let hooks = RuntimeHooks::new(Arc::new(runc::RecordingRuntime::default()));
        let action = HookAction::HttpGet {
            url: format!("http://127.0.0.1:{port}/drain"),
            headers: vec![("X-Reason".into(), "rollout".into())],
        };
        hooks
            .run("c", &action, Duration::from_secs(5))
            .expect("a 500 is still an answer");
        let request = server.join().expect("server");
        assert!(request.starts_with("GET /drain HTTP/1.1"), "{request}");
        assert!(
            request.to_lowercase().contains("x-reason: rollout"),
            "{request}"
        );
        // Nobody listens there any more.
        let err = hooks
            .run("c", &action, Duration::from_secs(2))
            .expect_err("refused");
        assert!(matches!(err, HookError::Http { .. }), "{err}");
    }

    #[test]
    fn exec_hook_exit_codes() {
        let runtime = Arc::new(runc::RecordingRuntime::default());
        runtime.run("c", std::path::Path::new("/b")).expect("run");
        runtime
            .exec_codes
            .lock()
            .expect("lock")
            .insert("false".into(), 1);
        let hooks = RuntimeHooks::new(runtime.clone());
        let exec = |cmd: &str| HookAction::Exec {
            command: vec![cmd.to_string()],
        };
        hooks
            .run("c", &exec("true"), Duration::from_secs(1))
            .expect("exit 0");
        let err = hooks
            .run("c", &exec("false"), Duration::from_secs(1))
            .expect_err("exit 1");
        assert!(matches!(err, HookError::Exit { code: 1, .. }), "{err}");
    }
}
