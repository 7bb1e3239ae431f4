//! The OCI runtime spec (`config.json`) for one container, built from the image config and
//! the Kubernetes container spec the way the kubelet and containerd build it. Pure: no I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::env::{Env, KubeletEnv, ServiceEnv, SmallEnv};

use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};

/// The PATH a container gets when its image sets none (containerd and runc's default spec).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an OCI image config (`config` in the image's config blob) a container uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` entries, as in the image.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// Everything the spec depends on besides the image config and the container spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContext {
    /// The pod's name: the container's hostname.
    pub pod_name: String,
    /// The network namespace the pod's containers join: `/var/run/netns/NAME`.
    pub netns: String,
    /// The pod's /etc/hosts and /etc/resolv.conf on the node, bind-mounted into every container.
    pub hosts_file: PathBuf,
    pub resolv_conf: PathBuf,
    /// The container's root filesystem (writable).
    pub rootfs: PathBuf,
    /// Variables the kubelet adds before the container's own (Service variables), in order;
    /// shared by the containers started from the same Services.
    pub service_env: ServiceEnv,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error(
        "container {container:?}: nothing to run (no command or args in the pod spec and no Entrypoint or Cmd in the image)"
    )]
    NoCommand { container: String },
    #[error(
        "container {container:?}: env {name:?} uses valueFrom, which the agent does not resolve yet"
    )]
    UnsupportedValueFrom { container: String, name: String },
}

/// The process a container runs: argv, env (image first, later wins) and cwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process<'a> {
    pub args: Vec<String>,
    pub env: Env<'a>,
    pub cwd: String,
}

/// The kubelet's environment for a container: Service variables, then the container's `env`
/// in order, each value expanded against the variables defined before it. Borrows the
/// Service variables and the container's names: nothing is copied per Service.
pub fn kubelet_env<'a>(
    container: &'a Container,
    service_env: &'a ServiceEnv,
) -> Result<KubeletEnv<'a>, BundleError> {
    let mut env = KubeletEnv {
        services: service_env,
        own: SmallEnv::default(),
    };
    for var in container.env.iter().flatten() {
        if var.value_from.is_some() {
            return Err(BundleError::UnsupportedValueFrom {
                container: container.name.clone(),
                name: var.name.clone(),
            });
        }
        let raw = var.value.as_deref().unwrap_or("");
        let value = if raw.contains('$') {
            Cow::Owned(expand(raw, &env))
        } else {
            Cow::Borrowed(raw)
        };
        env.own.set(&var.name, value);
    }
    Ok(env)
}

/// What the container runs, as the kubelet and containerd decide it:
///
/// | pod spec            | argv                      |
/// |---------------------|---------------------------|
/// | neither             | Entrypoint + Cmd          |
/// | command             | command (Cmd dropped)     |
/// | args                | Entrypoint + args         |
/// | command and args    | command + args            |
///
/// `$(VAR)` in command and args expands against the kubelet's env (not the image's env, which
/// the kubelet does not see); the final env is the image's, then the kubelet's (later wins).
pub fn process<'a>(
    image: &'a ImageConfig,
    container: &'a Container,
    service_env: &'a ServiceEnv,
) -> Result<Process<'a>, BundleError> {
    let kube_env = kubelet_env(container, service_env)?;
    let expand_all =
        |list: &Vec<String>| -> Vec<String> { list.iter().map(|a| expand(a, &kube_env)).collect() };
    let command = container.command.as_ref().filter(|c| !c.is_empty());
    let args = container.args.as_ref().filter(|a| !a.is_empty());
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let argv: Vec<String> = match (command, args) {
        (None, None) => entrypoint.into_iter().chain(cmd).collect(),
        (Some(command), None) => expand_all(command),
        (None, Some(args)) => entrypoint.into_iter().chain(expand_all(args)).collect(),
        (Some(command), Some(args)) => expand_all(command)
            .into_iter()
            .chain(expand_all(args))
            .collect(),
    };
    if argv.is_empty() {
        return Err(BundleError::NoCommand {
            container: container.name.clone(),
        });
    }

    let image_env: Vec<(&str, &str)> = image
        .env
        .iter()
        .flatten()
        .map(|entry| entry.split_once('=').unwrap_or((entry.as_str(), "")))
        .collect();
    let mut env = SmallEnv::default();
    if !image_env.iter().any(|(n, _)| *n == "PATH") {
        let (name, value) = DEFAULT_PATH.split_once('=').unwrap_or(("PATH", ""));
        env.set(name, Cow::Borrowed(value));
    }
    for (name, value) in image_env {
        env.set(name, Cow::Borrowed(value));
    }
    let cwd = container
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| image.working_dir.clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    Ok(Process {
        args: argv,
        env: Env {
            image: env,
            kubelet: kube_env,
        },
        cwd,
    })
}

/// The whole `config.json`: runc's default spec (`runc spec`) with the process, hostname,
/// rootfs, network namespace and the pod's /etc/hosts and /etc/resolv.conf filled in.
/// Serialize it straight to the file ([`RuntimeSpec::write_to`]): the environment is written
/// variable by variable, never held as JSON or text.
pub fn runtime_spec<'a>(
    image: &'a ImageConfig,
    container: &'a Container,
    pod: &'a PodContext,
) -> Result<RuntimeSpec<'a>, BundleError> {
    let process = process(image, container, &pod.service_env)?;
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    Ok(RuntimeSpec {
        oci_version: "1.0.2-dev",
        process: ProcessSpec {
            terminal: false,
            user: json!({"uid": 0, "gid": 0}),
            args: process.args,
            env: process.env,
            cwd: process.cwd,
            capabilities: json!({
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps,
            }),
            rlimits: json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]),
            no_new_privileges: true,
        },
        root: json!({"path": pod.rootfs, "readonly": false}),
        hostname: &pod.pod_name,
        mounts: json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": pod.hosts_file,
             "options": ["rbind", "rw"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": pod.resolv_conf,
             "options": ["rbind", "rw"]},
        ]),
        linux: json!({
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": pod.netns},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        }),
    })
}

/// `config.json` (the OCI runtime spec), serialized as it is written.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec<'a> {
    pub oci_version: &'static str,
    pub process: ProcessSpec<'a>,
    pub root: Value,
    pub hostname: &'a str,
    pub mounts: Value,
    pub linux: Value,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec<'a> {
    pub terminal: bool,
    pub user: Value,
    pub args: Vec<String>,
    pub env: Env<'a>,
    pub cwd: String,
    pub capabilities: Value,
    pub rlimits: Value,
    pub no_new_privileges: bool,
}

impl RuntimeSpec<'_> {
    /// Writes the spec as JSON to `out` (buffered here).
    pub fn write_to(&self, out: impl std::io::Write) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(out);
        serde_json::to_writer(&mut out, self)?;
        std::io::Write::flush(&mut out)
    }

    /// The spec as a JSON value (tests).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Variables by name, for [`expand`].
pub trait Vars {
    fn var(&self, name: &str) -> Option<&str>;
}

impl Vars for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name).copied()
    }
}

impl Vars for KubeletEnv<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// Kubernetes' `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
/// `$(NAME)` becomes the value when NAME is known and stays `$(NAME)` when not; `$$` is a
/// literal `$` (so `$$(A)` gives `$(A)`); a `$` before anything else, or an unclosed `$(`,
/// is kept as written.
pub fn expand(input: &str, vars: &impl Vars) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(close) => {
                    let name = &inner[..close];
                    match vars.var(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            // A lone `$`, or `$` before another character: kept (the next character is
            // copied by the next round).
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EnvVar;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(strings(&["/bin/httpd"])),
            cmd: Some(strings(&["-f", "-p", "80"])),
            env: Some(strings(&["PATH=/bin", "LANG=C", "MODE=image"])),
            working_dir: Some("/www".into()),
        }
    }

    fn container(
        command: Option<&[&str]>,
        args: Option<&[&str]>,
        env: &[(&str, &str)],
    ) -> Container {
        Container {
            name: "web".into(),
            command: command.map(strings),
            args: args.map(strings),
            env: Some(
                env.iter()
                    .map(|(n, v)| EnvVar {
                        name: n.to_string(),
                        value: Some(v.to_string()),
                        value_from: None,
                    })
                    .collect(),
            ),
            ..Container::default()
        }
    }

    fn argv(c: &Container) -> Vec<String> {
        process(&image(), c, &ServiceEnv::default())
            .expect("process")
            .args
    }

    #[test]
    fn neither_command_nor_args_runs_entrypoint_and_cmd() {
        assert_eq!(
            argv(&container(None, None, &[])),
            strings(&["/bin/httpd", "-f", "-p", "80"])
        );
    }

    #[test]
    fn command_replaces_entrypoint_and_drops_cmd() {
        assert_eq!(
            argv(&container(Some(&["/bin/sh"]), None, &[])),
            strings(&["/bin/sh"])
        );
    }

    #[test]
    fn args_replace_cmd_after_entrypoint() {
        assert_eq!(
            argv(&container(None, Some(&["-p", "8080"]), &[])),
            strings(&["/bin/httpd", "-p", "8080"])
        );
    }

    #[test]
    fn command_and_args_replace_both() {
        assert_eq!(
            argv(&container(
                Some(&["/bin/sh", "-c"]),
                Some(&["echo hi"]),
                &[]
            )),
            strings(&["/bin/sh", "-c", "echo hi"])
        );
    }

    #[test]
    fn empty_lists_count_as_absent() {
        assert_eq!(
            argv(&container(Some(&[]), Some(&[]), &[])),
            strings(&["/bin/httpd", "-f", "-p", "80"])
        );
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let (image, container, none) = (
            ImageConfig::default(),
            container(None, None, &[]),
            ServiceEnv::default(),
        );
        let err = process(&image, &container, &none);
        assert_eq!(
            err,
            Err(BundleError::NoCommand {
                container: "web".into()
            })
        );
    }

    #[test]
    fn image_only_args_are_not_expanded() {
        // The kubelet expands only what the pod spec says, never the image's Cmd.
        let img = ImageConfig {
            entrypoint: None,
            cmd: Some(strings(&["echo", "$(A)"])),
            ..ImageConfig::default()
        };
        let (c, none) = (container(None, None, &[("A", "x")]), ServiceEnv::default());
        let p = process(&img, &c, &none).expect("process");
        assert_eq!(p.args, strings(&["echo", "$(A)"]));
    }

    #[test]
    fn env_is_image_then_service_then_container_later_wins() {
        let service = ServiceEnv::from(vec![(
            "WEB_SERVICE_HOST".to_string(),
            "10.96.0.10".to_string(),
        )]);
        let env = process(
            &image(),
            &container(None, None, &[("MODE", "pod"), ("EXTRA", "1")]),
            &service,
        )
        .expect("process")
        .env
        .strings();
        assert_eq!(
            env,
            strings(&[
                "PATH=/bin",
                "LANG=C",
                "MODE=pod",
                "WEB_SERVICE_HOST=10.96.0.10",
                "EXTRA=1"
            ])
        );
    }

    #[test]
    fn default_path_when_the_image_has_none() {
        let env = process(
            &ImageConfig::default(),
            &container(Some(&["x"]), None, &[]),
            &ServiceEnv::default(),
        )
        .expect("process")
        .env
        .strings();
        assert_eq!(env, strings(&[DEFAULT_PATH]));
    }

    #[test]
    fn env_expands_against_earlier_variables_only() {
        let c = container(
            Some(&[
                "echo",
                "$(GREETING) $(NAME)",
                "$$(NAME)",
                "$(UNKNOWN)",
                "$(LANG)",
            ]),
            Some(&["cost: $5", "$(open"]),
            &[
                ("BEFORE", "$(NAME)"),
                ("NAME", "tend"),
                ("GREETING", "hello $(NAME)"),
                ("ESC", "$$(NAME)"),
            ],
        );
        let (image, none) = (image(), ServiceEnv::default());
        let p = process(&image, &c, &none).expect("process");
        // Command and args see the kubelet's env, not the image's LANG.
        assert_eq!(
            p.args,
            strings(&[
                "echo",
                "hello tend tend",
                "$(NAME)",
                "$(UNKNOWN)",
                "$(LANG)",
                "cost: $5",
                "$(open"
            ])
        );
        let env = p.env.strings();
        assert!(env.contains(&"BEFORE=$(NAME)".to_string()), "{env:?}");
        assert!(env.contains(&"GREETING=hello tend".to_string()));
        assert!(env.contains(&"ESC=$(NAME)".to_string()));
    }

    #[test]
    fn expansion_cases() {
        let vars: BTreeMap<&str, &str> = [("A", "a"), ("B", "b")].into_iter().collect();
        for (input, want) in [
            ("$(A)", "a"),
            ("x$(A)y$(B)z", "xaybz"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$a"),
            ("$$", "$"),
            ("$(C)", "$(C)"),
            ("$A", "$A"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("$(A)$(", "a$("),
            ("", ""),
        ] {
            assert_eq!(expand(input, &vars), want, "input {input:?}");
        }
    }

    #[test]
    fn thousands_of_service_variables_merge_in_order_with_later_definitions_in_place() {
        let service_env: ServiceEnv = (0..14_000)
            .map(|i| {
                (
                    format!("SVC_{i}_SERVICE_HOST"),
                    format!("10.96.{}.{}", i / 250, i % 250),
                )
            })
            .collect();
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "x", "command": ["run"],
            "env": [
                {"name": "SVC_7_SERVICE_HOST", "value": "override"},
                {"name": "MINE", "value": "$(SVC_8_SERVICE_HOST)/x"},
            ],
        }))
        .expect("container");
        let image = ImageConfig {
            env: Some(vec![
                "SVC_9_SERVICE_HOST=from-image".into(),
                "LANG=C".into(),
            ]),
            ..ImageConfig::default()
        };
        let p = process(&image, &container, &service_env).expect("process");
        let env = p.env.strings();
        assert_eq!(env.len(), 14_000 + 3, "PATH, LANG, the Services and MINE");
        assert!(env[0].starts_with("PATH="), "{:?}", &env[..3]);
        assert_eq!(
            env[1], "SVC_9_SERVICE_HOST=10.96.0.9",
            "the kubelet's value wins in place"
        );
        assert_eq!(env[2], "LANG=C");
        assert!(env.contains(&"SVC_7_SERVICE_HOST=override".to_string()));
        assert_eq!(env.last().map(String::as_str), Some("MINE=10.96.0.8/x"));
    }

    #[test]
    fn working_dir_from_pod_then_image_then_root() {
        let mut c = container(None, None, &[]);
        assert_eq!(
            process(&image(), &c, &ServiceEnv::default())
                .expect("p")
                .cwd,
            "/www"
        );
        c.working_dir = Some("/data".into());
        assert_eq!(
            process(&image(), &c, &ServiceEnv::default())
                .expect("p")
                .cwd,
            "/data"
        );
        let bare = ImageConfig {
            entrypoint: Some(strings(&["x"])),
            ..ImageConfig::default()
        };
        assert_eq!(
            process(&bare, &container(None, None, &[]), &ServiceEnv::default())
                .expect("p")
                .cwd,
            "/"
        );
    }

    #[test]
    fn value_from_is_refused_with_the_variable_name() {
        let mut c = container(None, None, &[]);
        c.env = Some(vec![EnvVar {
            name: "POD_IP".into(),
            value: None,
            value_from: Some(Default::default()),
        }]);
        assert_eq!(
            process(&image(), &c, &ServiceEnv::default()),
            Err(BundleError::UnsupportedValueFrom {
                container: "web".into(),
                name: "POD_IP".into()
            })
        );
    }

    #[test]
    fn spec_has_pod_hostname_netns_mounts_and_writable_root() {
        let pod = PodContext {
            pod_name: "web-7d9f-abcde".into(),
            netns: "/var/run/netns/pod-1".into(),
            hosts_file: "/state/pods/1/hosts".into(),
            resolv_conf: "/state/pods/1/resolv.conf".into(),
            rootfs: "/state/containers/c1/rootfs".into(),
            service_env: ServiceEnv::default(),
        };
        let image = image();
        let container = container(None, None, &[]);
        let spec = runtime_spec(&image, &container, &pod)
            .expect("spec")
            .to_value();
        assert_eq!(spec["hostname"], "web-7d9f-abcde");
        assert_eq!(spec["process"]["terminal"], false);
        assert_eq!(
            spec["root"],
            json!({"path": "/state/containers/c1/rootfs", "readonly": false})
        );
        let namespaces = spec["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(namespaces.contains(&json!({"type": "network", "path": "/var/run/netns/pod-1"})));
        for ns in ["pid", "ipc", "uts", "mount"] {
            assert!(namespaces.contains(&json!({"type": ns})), "{ns}");
        }
        let mounts = spec["mounts"].as_array().expect("mounts");
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .expect("hosts");
        assert_eq!(hosts["source"], "/state/pods/1/hosts");
        assert_eq!(hosts["type"], "bind");
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/etc/resolv.conf")
        );
        assert_eq!(
            spec["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }
}
