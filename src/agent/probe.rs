//! Container probes (startup, liveness, readiness), the pure part: a pod spec's `Probe` read
//! with Kubernetes' defaults, named ports resolved against the container's ports, where a
//! probe goes, and the per-container state machine that says which probe runs when and what
//! its results mean. Time comes in as `now`, an offset from the container's start. The
//! probes themselves run in [`super::prober`]; [`super::pods::plan`] reads the outcome
//! ([`ProbeObserved`]) through [`container_status`] and [`after_kill`].
//!
//! Semantics, as the kubelet's prober worker and results manager:
//! - a result only settles after `successThreshold` consecutive successes or
//!   `failureThreshold` consecutive failures; until then the previous result holds;
//! - before its first settled result a readiness probe says "not ready", a liveness probe
//!   "alive" and a startup probe "not started";
//! - liveness and readiness do not run until the startup probe succeeded; a container
//!   without a startup probe is started as soon as it runs;
//! - a failed liveness or startup probe asks for the container to be killed and stops
//!   probing that instance; the restarted container gets fresh probes;
//! - a probe that cannot run at all (a port name the container does not have, an
//!   unsupported gRPC probe) is an error, not a failure: its result is thrown away, so
//!   readiness stays false and liveness never kills, as in the kubelet.
//!
//! Worked example (readiness, period 10 s, successThreshold 2, failureThreshold 3, no
//! initial delay): probes at t=0, 10, 20, ... succeed at 0 and 10: ready from t=10. They
//! fail at 20 and 30 and succeed at 40: still ready (two failures are under three). They
//! fail at 50, 60, 70: not ready from t=70.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::runtime::restart::{self, Exit, RestartPolicy, Tracked};

/// Kubernetes' defaults for a probe's timing and thresholds.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// The exit code reported for a container killed after a failed liveness or startup probe.
pub const KILLED_EXIT_CODE: i32 = 137;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// What a probe does, ports resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    Http {
        scheme: Scheme,
        /// `None`: the pod's IP.
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

/// A probe that cannot run: its results are thrown away (see the module's comment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "container {container:?}: {kind} probe: port {port:?} is not the name of one of the container's ports ({known})"
    )]
    UnknownPortName {
        container: String,
        kind: ProbeKind,
        port: String,
        known: String,
    },
    #[error("container {container:?}: {kind} probe: port {port} is not in 1-65535")]
    PortOutOfRange {
        container: String,
        kind: ProbeKind,
        port: i64,
    },
    #[error("container {container:?}: {kind} probe: scheme {scheme:?} is neither HTTP nor HTTPS")]
    BadScheme {
        container: String,
        kind: ProbeKind,
        scheme: String,
    },
    #[error("container {container:?}: {kind} probe: an exec probe needs a command")]
    EmptyCommand { container: String, kind: ProbeKind },
    #[error("container {container:?}: {kind} probe: gRPC probes are not supported by tend")]
    Unsupported { container: String, kind: ProbeKind },
    #[error(
        "container {container:?}: {kind} probe: no handler (httpGet, tcpSocket or exec is needed)"
    )]
    NoHandler { container: String, kind: ProbeKind },
    #[error("{kind} probe: the pod has no IP yet and the probe names no host")]
    NoPodIp { kind: ProbeKind },
}

/// One probe of a container, with Kubernetes' defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub handler: Result<Handler, ProbeError>,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    /// Always 1 for liveness and startup probes (the API requires it).
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe's own `terminationGracePeriodSeconds` (liveness and startup only).
    pub grace: Option<Duration>,
}

/// A positive count of seconds, or `default` when absent, zero or negative (as the API
/// server's defaulting turns 0 into the default; validation would reject negatives).
fn seconds(value: Option<i32>, default: Duration) -> Duration {
    match value {
        Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs().into()),
        _ => default,
    }
}

fn threshold(value: Option<i32>, default: u32) -> u32 {
    match value {
        Some(n) if n > 0 => n.unsigned_abs(),
        _ => default,
    }
}

impl ProbeSpec {
    /// `probe` of `container`, read with Kubernetes' defaults; a handler that cannot run is
    /// kept as its error.
    pub fn from_probe(kind: ProbeKind, probe: &Probe, container: &Container) -> ProbeSpec {
        let success_threshold = match kind {
            ProbeKind::Readiness => threshold(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            ProbeKind::Liveness | ProbeKind::Startup => 1,
        };
        let grace = match kind {
            ProbeKind::Readiness => None,
            _ => probe
                .termination_grace_period_seconds
                .filter(|s| *s >= 0)
                .map(|s| Duration::from_secs(s.unsigned_abs())),
        };
        ProbeSpec {
            kind,
            handler: handler(kind, probe, container),
            initial_delay: probe
                .initial_delay_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s.unsigned_abs().into()))
                .unwrap_or(Duration::ZERO),
            period: seconds(probe.period_seconds, DEFAULT_PERIOD),
            timeout: seconds(probe.timeout_seconds, DEFAULT_TIMEOUT),
            success_threshold,
            failure_threshold: threshold(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
            grace,
        }
    }
}

fn handler(kind: ProbeKind, probe: &Probe, container: &Container) -> Result<Handler, ProbeError> {
    let name = || container.name.clone();
    if let Some(http) = &probe.http_get {
        let scheme = match http.scheme.as_deref() {
            None | Some("HTTP") | Some("http") => Scheme::Http,
            Some("HTTPS") | Some("https") => Scheme::Https,
            Some(other) => {
                return Err(ProbeError::BadScheme {
                    container: name(),
                    kind,
                    scheme: other.to_string(),
                });
            }
        };
        let path = match http.path.as_deref() {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        return Ok(Handler::Http {
            scheme,
            host: http.host.clone().filter(|h| !h.is_empty()),
            port: resolve_port(&http.port, container, kind)?,
            path,
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Ok(Handler::Tcp {
            host: tcp.host.clone().filter(|h| !h.is_empty()),
            port: resolve_port(&tcp.port, container, kind)?,
        });
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(ProbeError::EmptyCommand {
                container: name(),
                kind,
            });
        }
        return Ok(Handler::Exec { command });
    }
    if probe.grpc.is_some() {
        return Err(ProbeError::Unsupported {
            container: name(),
            kind,
        });
    }
    Err(ProbeError::NoHandler {
        container: name(),
        kind,
    })
}

/// A probe's port: a number, or the name of one of the container's `ports`.
pub fn resolve_port(
    port: &IntOrString,
    container: &Container,
    kind: ProbeKind,
) -> Result<u16, ProbeError> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => {
            let ports = container.ports.iter().flatten();
            match ports
                .clone()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
            {
                Some(p) => i64::from(p.container_port),
                None => {
                    let known: Vec<String> = ports
                        .filter_map(|p| {
                            p.name.as_ref().map(|n| format!("{n}={}", p.container_port))
                        })
                        .collect();
                    return Err(ProbeError::UnknownPortName {
                        container: container.name.clone(),
                        kind,
                        port: name.clone(),
                        known: if known.is_empty() {
                            "it names none".to_string()
                        } else {
                            known.join(", ")
                        },
                    });
                }
            }
        }
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(ProbeError::PortOutOfRange {
            container: container.name.clone(),
            kind,
            port: number,
        })
}

/// The probes `container` declares, startup first.
pub fn container_probes(container: &Container) -> Vec<ProbeSpec> {
    [
        (ProbeKind::Startup, &container.startup_probe),
        (ProbeKind::Liveness, &container.liveness_probe),
        (ProbeKind::Readiness, &container.readiness_probe),
    ]
    .into_iter()
    .filter_map(|(kind, probe)| {
        probe
            .as_ref()
            .map(|p| ProbeSpec::from_probe(kind, p, container))
    })
    .collect()
}

/// Where one probe goes, addresses filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Exec {
        container_id: String,
        command: Vec<String>,
    },
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeTarget::Http { url, .. } => write!(f, "GET {url}"),
            ProbeTarget::Tcp { host, port } => write!(f, "tcp {}", host_port(host, *port)),
            ProbeTarget::Exec { command, .. } => write!(f, "exec {command:?}"),
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The target of `handler` for the container `container_id` of a pod at `pod_ip`; a
/// handler without a host goes to the pod's IP, as the kubelet's.
pub fn target(
    kind: ProbeKind,
    handler: &Handler,
    pod_ip: Option<&str>,
    container_id: &str,
) -> Result<ProbeTarget, ProbeError> {
    let host = |host: &Option<String>| {
        host.clone()
            .or_else(|| pod_ip.map(str::to_string))
            .ok_or(ProbeError::NoPodIp { kind })
    };
    Ok(match handler {
        Handler::Http {
            scheme,
            host: h,
            port,
            path,
            headers,
        } => {
            let scheme = match scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            };
            ProbeTarget::Http {
                url: format!("{scheme}://{}{path}", host_port(&host(h)?, *port)),
                headers: headers.clone(),
            }
        }
        Handler::Tcp { host: h, port } => ProbeTarget::Tcp {
            host: host(h)?,
            port: *port,
        },
        Handler::Exec { command } => ProbeTarget::Exec {
            container_id: container_id.to_string(),
            command: command.clone(),
        },
    })
}

/// What one run of a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    Failure(String),
    /// The probe could not run (bad spec, container gone): the result is thrown away.
    Error(String),
}

/// An HTTP probe's verdict on a status code: 200 <= code < 400 succeeds (redirects are not
/// followed; a redirect is a success).
pub fn http_outcome(code: u16) -> ProbeOutcome {
    if (200..400).contains(&code) {
        ProbeOutcome::Success
    } else {
        ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// What the probes say of one container instance, for [`super::pods::plan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeObserved {
    /// The readiness probe's settled result; `None` before the first one (not ready).
    pub ready: Option<bool>,
    /// The startup probe succeeded (true from the start without a startup probe).
    pub started: bool,
    /// A liveness or startup probe failed `failureThreshold` times: kill and restart. The
    /// reason, e.g. "Liveness probe failed: HTTP probe failed with statuscode: 500".
    pub unhealthy: Option<String>,
    /// The failed probe's own `terminationGracePeriodSeconds`, when it has one.
    pub kill_grace: Option<Duration>,
}

/// `started` and `ready` of a container's status: a running container is started when it
/// has no startup probe or that probe succeeded, and ready when started and it has no
/// readiness probe or that probe's settled result is success.
pub fn container_status(
    container: &Container,
    observed: &ProbeObserved,
    running: bool,
) -> (bool, bool) {
    let started = running && (container.startup_probe.is_none() || observed.started);
    let ready = started && (container.readiness_probe.is_none() || observed.ready == Some(true));
    (started, ready)
}

/// The restart bookkeeping after the agent killed an unhealthy container that started at
/// `started_at`: the kill counts as an exit with code 137 at `now`. As the kubelet, the
/// first kill restarts at once (when the policy restarts at all) and later ones wait the
/// crash back-off, so a container failing its liveness probe again and again ends in
/// CrashLoopBackOff.
pub fn after_kill(
    policy: RestartPolicy,
    tracked: Tracked,
    started_at: Timestamp,
    now: Timestamp,
) -> Tracked {
    let exit = Exit {
        exit_code: KILLED_EXIT_CODE,
        started_at,
        finished_at: now,
    };
    let first = tracked.last_exit.is_none();
    let mut tracked = restart::after_exit(policy, tracked, exit);
    if first && tracked.restart_at.is_some() {
        tracked.restart_at = Some(now);
        tracked.backoff = restart::INITIAL_BACKOFF;
    }
    tracked
}

/// One probe's schedule and consecutive results.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeState {
    spec: ProbeSpec,
    /// When it runs next, from the container's start.
    next_at: Duration,
    /// The last raw result and how many times in a row it came.
    last: Option<bool>,
    run: u32,
}

/// The probes of one container instance: which is due when, and what their results mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProbes {
    probes: Vec<ProbeState>,
    observed: ProbeObserved,
}

impl ContainerProbes {
    pub fn new(specs: Vec<ProbeSpec>) -> ContainerProbes {
        let started = !specs.iter().any(|s| s.kind == ProbeKind::Startup);
        ContainerProbes {
            probes: specs
                .into_iter()
                .map(|spec| ProbeState {
                    next_at: spec.initial_delay,
                    spec,
                    last: None,
                    run: 0,
                })
                .collect(),
            observed: ProbeObserved {
                started,
                ..ProbeObserved::default()
            },
        }
    }

    pub fn observed(&self) -> &ProbeObserved {
        &self.observed
    }

    pub fn spec(&self, kind: ProbeKind) -> Option<&ProbeSpec> {
        self.probes
            .iter()
            .find(|p| p.spec.kind == kind)
            .map(|p| &p.spec)
    }

    /// Whether `kind` runs at all now: startup until it succeeds, the others after it;
    /// nothing once the container is to be killed.
    fn active(&self, kind: ProbeKind) -> bool {
        if self.observed.unhealthy.is_some() {
            return false;
        }
        match kind {
            ProbeKind::Startup => !self.observed.started,
            ProbeKind::Liveness | ProbeKind::Readiness => self.observed.started,
        }
    }

    /// The probes to run at `now` (an offset from the container's start).
    pub fn due(&self, now: Duration) -> Vec<ProbeKind> {
        self.probes
            .iter()
            .filter(|p| self.active(p.spec.kind) && p.next_at <= now)
            .map(|p| p.spec.kind)
            .collect()
    }

    /// When the next probe is due; `None` when no probe will run again for this instance.
    pub fn next_due(&self) -> Option<Duration> {
        self.probes
            .iter()
            .filter(|p| self.active(p.spec.kind))
            .map(|p| p.next_at)
            .min()
    }

    /// Records a run of `kind` that started at `now`; true when [`Self::observed`] changed.
    pub fn record(&mut self, kind: ProbeKind, outcome: &ProbeOutcome, now: Duration) -> bool {
        let Some(probe) = self.probes.iter_mut().find(|p| p.spec.kind == kind) else {
            return false;
        };
        probe.next_at = now + probe.spec.period;
        let success = match outcome {
            ProbeOutcome::Success => true,
            ProbeOutcome::Failure(_) => false,
            ProbeOutcome::Error(_) => return false,
        };
        if probe.last == Some(success) {
            probe.run = probe.run.saturating_add(1);
        } else {
            probe.last = Some(success);
            probe.run = 1;
        }
        let needed = if success {
            probe.spec.success_threshold
        } else {
            probe.spec.failure_threshold
        };
        if probe.run < needed {
            return false;
        }
        let before = self.observed.clone();
        let message = match outcome {
            ProbeOutcome::Failure(m) => m.as_str(),
            _ => "",
        };
        match (kind, success) {
            (ProbeKind::Readiness, ready) => self.observed.ready = Some(ready),
            (ProbeKind::Startup, true) => self.observed.started = true,
            (ProbeKind::Liveness, true) => {}
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                self.observed.unhealthy = Some(format!("{kind} probe failed: {message}"));
                self.observed.kill_grace = probe.spec.grace;
            }
        }
        self.observed != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
    };

    const S: Duration = Duration::from_secs(1);

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }
    }

    fn http_probe(port: IntOrString) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: Some("healthz".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".into(),
                    value: "1".into(),
                }]),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        }
    }

    fn spec(kind: ProbeKind, probe: Probe) -> ProbeSpec {
        ProbeSpec::from_probe(kind, &probe, &container())
    }

    #[test]
    fn defaults_are_kubernetes_ones_and_liveness_success_is_one() {
        let mut p = http_probe(IntOrString::Int(80));
        p.success_threshold = Some(5);
        let r = spec(ProbeKind::Readiness, p.clone());
        assert_eq!(
            (r.initial_delay, r.period, r.timeout),
            (Duration::ZERO, 10 * S, S)
        );
        assert_eq!((r.success_threshold, r.failure_threshold), (5, 3));
        let l = spec(ProbeKind::Liveness, p.clone());
        assert_eq!(l.success_threshold, 1);
        p.period_seconds = Some(0);
        p.timeout_seconds = Some(-3);
        p.failure_threshold = Some(0);
        p.initial_delay_seconds = Some(7);
        let z = spec(ProbeKind::Startup, p);
        assert_eq!((z.period, z.timeout, z.failure_threshold), (10 * S, S, 3));
        assert_eq!(z.initial_delay, 7 * S);
    }

    #[test]
    fn http_port_by_name_path_and_headers() {
        let s = spec(
            ProbeKind::Readiness,
            http_probe(IntOrString::String("http".into())),
        );
        let h = s.handler.expect("handler");
        assert_eq!(
            h,
            Handler::Http {
                scheme: Scheme::Http,
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-Probe".into(), "1".into())],
            }
        );
        let t = target(ProbeKind::Readiness, &h, Some("10.244.1.5"), "uid-web").expect("target");
        assert_eq!(
            t,
            ProbeTarget::Http {
                url: "http://10.244.1.5:8080/healthz".into(),
                headers: vec![("X-Probe".into(), "1".into())],
            }
        );
        assert_eq!(
            target(ProbeKind::Readiness, &h, None, "uid-web"),
            Err(ProbeError::NoPodIp {
                kind: ProbeKind::Readiness
            })
        );
        let mut https = http_probe(IntOrString::Int(8443));
        if let Some(g) = https.http_get.as_mut() {
            g.scheme = Some("HTTPS".into());
            g.host = Some("127.0.0.1".into());
        }
        let h = spec(ProbeKind::Liveness, https).handler.expect("handler");
        let t = target(ProbeKind::Liveness, &h, Some("10.244.1.5"), "c").expect("target");
        assert_eq!(t.to_string(), "GET https://127.0.0.1:8443/healthz");
    }

    #[test]
    fn a_port_name_the_container_lacks_is_a_clear_error() {
        let s = spec(
            ProbeKind::Liveness,
            http_probe(IntOrString::String("metrics".into())),
        );
        let e = s.handler.expect_err("unknown name");
        assert_eq!(
            e.to_string(),
            "container \"web\": Liveness probe: port \"metrics\" is not the name of one of the container's ports (http=8080)"
        );
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(70000),
                host: None,
            }),
            ..Probe::default()
        };
        assert!(matches!(
            spec(ProbeKind::Readiness, tcp).handler,
            Err(ProbeError::PortOutOfRange { port: 70000, .. })
        ));
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("http".into()),
                host: None,
            }),
            ..Probe::default()
        };
        assert_eq!(
            spec(ProbeKind::Readiness, tcp).handler,
            Ok(Handler::Tcp {
                host: None,
                port: 8080
            })
        );
        let empty = Probe {
            exec: Some(ExecAction { command: None }),
            ..Probe::default()
        };
        assert!(matches!(
            spec(ProbeKind::Readiness, empty).handler,
            Err(ProbeError::EmptyCommand { .. })
        ));
        assert!(matches!(
            spec(ProbeKind::Readiness, Probe::default()).handler,
            Err(ProbeError::NoHandler { .. })
        ));
    }

    #[test]
    fn an_error_is_thrown_away_not_a_failure() {
        let mut p = ContainerProbes::new(vec![
            spec(ProbeKind::Readiness, http_probe(IntOrString::Int(80))),
            spec(ProbeKind::Liveness, http_probe(IntOrString::Int(80))),
        ]);
        for i in 0..10 {
            let now = 10 * S * i;
            assert!(!p.record(ProbeKind::Readiness, &ProbeOutcome::Error("x".into()), now));
            assert!(!p.record(ProbeKind::Liveness, &ProbeOutcome::Error("x".into()), now));
        }
        assert_eq!(p.observed().ready, None);
        assert_eq!(p.observed().unhealthy, None);
    }

    fn outcome(ok: bool) -> ProbeOutcome {
        if ok {
            ProbeOutcome::Success
        } else {
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
        }
    }

    #[test]
    fn readiness_follows_the_thresholds_as_in_the_worked_example() {
        let mut probe = http_probe(IntOrString::Int(80));
        probe.success_threshold = Some(2);
        let mut p = ContainerProbes::new(vec![spec(ProbeKind::Readiness, probe)]);
        assert_eq!(p.observed().ready, None, "not ready before a result");
        assert!(p.observed().started);
        let mut ready = Vec::new();
        for (i, ok) in [true, true, false, false, true, false, false, false]
            .into_iter()
            .enumerate()
        {
            let now = 10 * S * u32::try_from(i).expect("small");
            assert_eq!(p.due(now), vec![ProbeKind::Readiness], "due at {now:?}");
            p.record(ProbeKind::Readiness, &outcome(ok), now);
            assert!(p.due(now).is_empty());
            assert_eq!(p.next_due(), Some(now + 10 * S));
            ready.push(p.observed().ready);
        }
        let t = Some(true);
        let f = Some(false);
        assert_eq!(ready, vec![None, t, t, t, t, t, t, f]);
    }

    #[test]
    fn initial_delay_then_every_period() {
        let mut probe = http_probe(IntOrString::Int(80));
        probe.initial_delay_seconds = Some(5);
        probe.period_seconds = Some(2);
        let mut p = ContainerProbes::new(vec![spec(ProbeKind::Liveness, probe)]);
        assert!(p.due(Duration::ZERO).is_empty());
        assert!(p.due(4 * S).is_empty());
        assert_eq!(p.next_due(), Some(5 * S));
        assert_eq!(p.due(5 * S), vec![ProbeKind::Liveness]);
        p.record(ProbeKind::Liveness, &ProbeOutcome::Success, 5 * S);
        assert!(p.due(6 * S).is_empty());
        assert_eq!(p.due(7 * S), vec![ProbeKind::Liveness]);
    }

    #[test]
    fn liveness_kills_after_failure_threshold_and_stops() {
        let mut probe = http_probe(IntOrString::Int(80));
        probe.failure_threshold = Some(2);
        probe.termination_grace_period_seconds = Some(3);
        let mut p = ContainerProbes::new(vec![spec(ProbeKind::Liveness, probe)]);
        // A success in between resets the count.
        assert!(!p.record(ProbeKind::Liveness, &outcome(false), Duration::ZERO));
        assert!(!p.record(ProbeKind::Liveness, &outcome(true), 10 * S));
        assert!(!p.record(ProbeKind::Liveness, &outcome(false), 20 * S));
        assert!(p.observed().unhealthy.is_none());
        assert!(p.record(ProbeKind::Liveness, &outcome(false), 30 * S));
        assert_eq!(
            p.observed().unhealthy.as_deref(),
            Some("Liveness probe failed: HTTP probe failed with statuscode: 500")
        );
        assert_eq!(p.observed().kill_grace, Some(3 * S));
        assert_eq!(p.next_due(), None, "no more probes for this instance");
        assert!(p.due(100 * S).is_empty());
    }

    #[test]
    fn startup_gates_liveness_and_readiness() {
        let mut startup = http_probe(IntOrString::Int(80));
        startup.period_seconds = Some(1);
        let mut readiness = http_probe(IntOrString::Int(80));
        readiness.initial_delay_seconds = Some(2);
        let mut p = ContainerProbes::new(vec![
            spec(ProbeKind::Startup, startup),
            spec(ProbeKind::Liveness, http_probe(IntOrString::Int(80))),
            spec(ProbeKind::Readiness, readiness),
        ]);
        assert!(!p.observed().started);
        assert_eq!(p.due(Duration::ZERO), vec![ProbeKind::Startup]);
        for i in 0..2 {
            let now = S * i;
            assert_eq!(p.due(now), vec![ProbeKind::Startup], "at {now:?}");
            p.record(ProbeKind::Startup, &outcome(false), now);
            assert!(!p.observed().started);
            assert!(p.observed().unhealthy.is_none(), "under 3 failures");
        }
        assert!(p.due(S).is_empty(), "liveness waits for startup");
        assert!(p.record(ProbeKind::Startup, &outcome(true), 2 * S));
        assert!(p.observed().started);
        assert!(p.observed().unhealthy.is_none());
        // The others start at once: their initial delay (from the container's start) passed.
        assert_eq!(
            p.due(4 * S),
            vec![ProbeKind::Liveness, ProbeKind::Readiness]
        );
        assert_eq!(p.observed().ready, None);
        p.record(ProbeKind::Readiness, &ProbeOutcome::Success, 4 * S);
        assert_eq!(p.observed().ready, Some(true));
        let c = Container {
            startup_probe: Some(Probe::default()),
            readiness_probe: Some(Probe::default()),
            ..container()
        };
        assert_eq!(container_status(&c, p.observed(), true), (true, true));
        assert_eq!(container_status(&c, p.observed(), false), (false, false));
    }

    #[test]
    fn startup_failing_kills_and_readiness_never_ran() {
        let mut p = ContainerProbes::new(vec![
            spec(ProbeKind::Startup, http_probe(IntOrString::Int(80))),
            spec(ProbeKind::Readiness, http_probe(IntOrString::Int(80))),
        ]);
        for i in 0..3 {
            assert_eq!(p.due(10 * S * i), vec![ProbeKind::Startup]);
            p.record(ProbeKind::Startup, &outcome(false), 10 * S * i);
        }
        assert!(
            p.observed()
                .unhealthy
                .as_deref()
                .is_some_and(|m| m.starts_with("Startup probe failed: "))
        );
        assert!(!p.observed().started);
        assert_eq!(p.next_due(), None);
        let c = Container {
            startup_probe: Some(Probe::default()),
            ..container()
        };
        assert_eq!(container_status(&c, p.observed(), true), (false, false));
    }

    #[test]
    fn no_probes_means_started_and_ready_when_running() {
        let p = ContainerProbes::new(Vec::new());
        assert_eq!(p.next_due(), None);
        assert_eq!(
            container_status(&container(), &ProbeObserved::default(), true),
            (true, true)
        );
        let c = Container {
            readiness_probe: Some(Probe::default()),
            ..container()
        };
        assert_eq!(
            container_status(&c, &ProbeObserved::default(), true),
            (true, false)
        );
    }

    #[test]
    fn http_codes() {
        assert_eq!(http_outcome(200), ProbeOutcome::Success);
        assert_eq!(http_outcome(301), ProbeOutcome::Success);
        assert_eq!(http_outcome(399), ProbeOutcome::Success);
        assert!(matches!(http_outcome(199), ProbeOutcome::Failure(_)));
        assert_eq!(
            http_outcome(500),
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("in range")
    }

    #[test]
    fn the_first_kill_restarts_at_once_later_ones_back_off() {
        let first = after_kill(RestartPolicy::Always, Tracked::default(), t(0), t(30));
        assert_eq!(first.restart_at, Some(t(30)));
        assert_eq!(first.last_exit.map(|e| e.exit_code), Some(137));
        let step = restart::step(
            RestartPolicy::Always,
            first,
            restart::Observed::Absent,
            t(30),
        );
        assert!(step.start);
        assert_eq!(step.tracked.restart_count, 1);
        let second = after_kill(RestartPolicy::Always, step.tracked, t(31), t(60));
        assert_eq!(second.restart_at, Some(t(70)), "10 s of back-off");
        let never = after_kill(RestartPolicy::Never, Tracked::default(), t(0), t(30));
        assert_eq!(never.restart_at, None);
    }
}
