//! The runc runtime for real: busybox containers in a network namespace made by the test.
//! Needs root, `runc`, `ip`, `chroot` and /bin/busybox (busybox-static); without them the
//! tests skip with a reason, unless `CI` is set, where they fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, EnvVar};
use tend::agent::runtime::bundle::{ImageConfig, PodContext, runtime_spec};
use tend::agent::runtime::runc::{
    ContainerRuntime, ContainerState, Runc, Status, become_subreaper, stop,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (tool, args) in [
        ("runc", &["--version"][..]),
        ("ip", &["-V"][..]),
        ("chroot", &["--version"][..]),
    ] {
        if Command::new(tool)
            .args(args)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} is missing"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Everything one test made: removed in Drop, containers first, also when the test fails.
struct Lab {
    runtime: Runc,
    name: String,
    dir: tempfile::TempDir,
    netns: Option<String>,
    containers: std::cell::RefCell<Vec<String>>,
}

impl Lab {
    fn new(test: &str) -> Option<Lab> {
        if let Some(reason) = missing() {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {reason}, and CI is set");
            }
            eprintln!("skipping {test}: {reason}");
            return None;
        }
        become_subreaper().expect("subreaper");
        let name = format!(
            "tend-rt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut lab = Lab {
            runtime: Runc::new("runc", &dir.path().join("state")).expect("runtime"),
            name: name.clone(),
            dir,
            netns: None,
            containers: Default::default(),
        };
        run("ip", &["netns", "add", &name]);
        lab.netns = Some(name);
        // The rootfs: busybox and its applets, nothing else.
        let rootfs = lab.rootfs();
        fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        for d in ["etc", "proc", "sys", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
        run(
            "chroot",
            &[
                rootfs.to_str().expect("utf-8 path"),
                "/bin/busybox",
                "--install",
                "-s",
                "/bin",
            ],
        );
        fs::write(
            lab.dir.path().join("hosts"),
            "127.0.0.1 localhost\n10.244.1.5 web-abc\n",
        )
        .expect("hosts");
        fs::write(
            lab.dir.path().join("resolv.conf"),
            "nameserver 10.96.0.10\n",
        )
        .expect("resolv.conf");
        Some(lab)
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }

    /// Writes the bundle for `container` of pod `pod` and runs it as `<lab name>-<suffix>`.
    fn run(&self, suffix: &str, pod: &str, image: &ImageConfig, container: &Container) -> String {
        self.run_on(&self.runtime, suffix, pod, image, container)
    }

    /// Like [`Lab::run`], started by `runtime` (e.g. one that goes through a reaper).
    fn run_on(
        &self,
        runtime: &Runc,
        suffix: &str,
        pod: &str,
        image: &ImageConfig,
        container: &Container,
    ) -> String {
        let id = format!("{}-{suffix}", self.name);
        let context = PodContext {
            pod_name: pod.into(),
            netns: format!("/var/run/netns/{}", self.name),
            hosts_file: self.dir.path().join("hosts"),
            resolv_conf: self.dir.path().join("resolv.conf"),
            rootfs: self.rootfs(),
            service_env: vec![("WEB_SERVICE_HOST".into(), "10.96.0.20".into())].into(),
        };
        let spec = runtime_spec(image, container, &context).expect("spec");
        let bundle = self.dir.path().join("bundle");
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).expect("json"),
        )
        .expect("config.json");
        self.containers.borrow_mut().push(id.clone());
        runtime.run(&id, &bundle).expect("runc run");
        id
    }

    fn wait_for(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&Option<ContainerState>, &str) -> bool,
    ) -> Option<ContainerState> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = self.runtime.state(id).expect("state");
            let log = fs::read_to_string(self.runtime.log_path(id)).unwrap_or_default();
            if done(&state, &log) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: no {what} after 10 s: state {state:?}, log {log:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self, id: &str) -> String {
        fs::read_to_string(self.runtime.log_path(id)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in self.containers.borrow().iter() {
            if let Err(e) = self.runtime.delete(id) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Some(netns) = self.netns.take() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &netns])
                .status();
        }
    }
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn shell(script: &str) -> Container {
    Container {
        name: "main".into(),
        command: Some(strings(&["sh", "-c", script])),
        ..Container::default()
    }
}

fn stopped(state: &Option<ContainerState>, _: &str) -> bool {
    state.as_ref().is_some_and(|s| s.status == Status::Stopped)
}

#[test]
fn runs_detached_logs_and_stops_on_sigterm() {
    let Some(lab) = Lab::new("runs_detached_logs_and_stops_on_sigterm") else {
        return;
    };
    let id = lab.run(
        "term",
        "web-abc",
        &ImageConfig::default(),
        &shell("trap 'echo bye; exit 7' TERM; echo hello; sleep 30 & wait"),
    );
    let state = lab
        .wait_for(&id, "hello", |s, log| {
            s.as_ref().is_some_and(|s| s.status == Status::Running) && log.contains("hello")
        })
        .expect("known");
    assert!(state.pid > 0);
    assert!(lab.runtime.list().expect("list").iter().any(|c| c.id == id));

    let started = Instant::now();
    let code = stop(
        &lab.runtime,
        &id,
        Duration::from_secs(10),
        Duration::from_millis(20),
    )
    .expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(7), "log {:?}", lab.log(&id));
    assert!(lab.log(&id).contains("bye"));

    lab.runtime.delete(&id).expect("delete");
    assert_eq!(lab.runtime.state(&id).expect("state"), None);
    assert!(!lab.runtime.list().expect("list").iter().any(|c| c.id == id));
}

#[test]
fn sigkill_after_the_grace_period() {
    let Some(lab) = Lab::new("sigkill_after_the_grace_period") else {
        return;
    };
    // A pid namespace's init without a handler never sees SIGTERM.
    let c = Container {
        name: "main".into(),
        command: Some(strings(&["sleep", "30"])),
        ..Container::default()
    };
    let id = lab.run("kill", "web-abc", &ImageConfig::default(), &c);
    lab.wait_for(&id, "running", |s, _| {
        s.as_ref().is_some_and(|s| s.status == Status::Running)
    });
    let started = Instant::now();
    let code = stop(
        &lab.runtime,
        &id,
        Duration::from_millis(500),
        Duration::from_millis(20),
    )
    .expect("stop");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(code, Some(137));
}

#[test]
fn exit_code_is_reported() {
    let Some(lab) = Lab::new("exit_code_is_reported") else {
        return;
    };
    let id = lab.run(
        "exit3",
        "web-abc",
        &ImageConfig::default(),
        &shell("echo failing; exit 3"),
    );
    let state = lab.wait_for(&id, "exit", stopped).expect("known");
    assert_eq!(state.exit_code, Some(3), "log {:?}", lab.log(&id));
    assert!(lab.log(&id).contains("failing"));
}

#[test]
fn hostname_env_args_and_pod_files_as_computed() {
    let Some(lab) = Lab::new("hostname_env_args_and_pod_files_as_computed") else {
        return;
    };
    let image = ImageConfig {
        entrypoint: Some(strings(&["/bin/sh", "-c"])),
        cmd: Some(strings(&["echo image cmd"])),
        env: Some(strings(&["FROM_IMAGE=image", "MODE=image"])),
        working_dir: Some("/tmp".into()),
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let container = Container {
        name: "main".into(),
        // args replace the image's Cmd and keep its Entrypoint.
        args: Some(strings(&[
            "echo host=$(hostname); echo \"mode=$MODE image=$FROM_IMAGE greeting=$GREETING svc=$WEB_SERVICE_HOST\"; \
             echo \"args=$0,$1\"; echo cwd=$(pwd); cat /etc/hosts /etc/resolv.conf",
            "$(NAME)",
            "$$(NAME)",
        ])),
        env: Some(vec![
            env("NAME", "tend"),
            env("GREETING", "hello $(NAME)"),
            env("MODE", "pod"),
        ]),
        ..Container::default()
    };
    let id = lab.run("env", "web-abc", &image, &container);
    lab.wait_for(&id, "exit", stopped);
    let log = lab.log(&id);
    // `$(hostname)` is not a variable Kubernetes knows, so the shell gets it unchanged.
    assert!(log.contains("host=web-abc\n"), "{log}");
    assert!(
        log.contains("mode=pod image=image greeting=hello tend svc=10.96.0.20\n"),
        "{log}"
    );
    assert!(log.contains("args=tend,$(NAME)\n"), "{log}");
    assert!(log.contains("cwd=/tmp\n"), "{log}");
    assert!(log.contains("10.244.1.5 web-abc"), "{log}");
    assert!(log.contains("nameserver 10.96.0.10"), "{log}");
    assert!(!log.contains("image cmd"), "{log}");
    assert_eq!(
        lab.runtime
            .state(&id)
            .expect("state")
            .and_then(|s| s.exit_code),
        Some(0)
    );
}

#[test]
fn exec_runs_inside_the_container_with_its_exit_code_and_a_timeout() {
    let Some(lab) = Lab::new("exec_runs_inside_the_container_with_its_exit_code_and_a_timeout")
    else {
        return;
    };
    let id = lab.run(
        "exec",
        "web-abc",
        &ImageConfig::default(),
        &shell("trap 'exit 0' TERM; echo ready > /tmp/ready; sleep 30 & wait"),
    );
    lab.wait_for(&id, "running", |s, _| {
        s.as_ref().is_some_and(|s| s.status == Status::Running)
    });
    let argv = |s: &str| strings(&["/bin/sh", "-c", s]);
    let mut found = None;
    for _ in 0..50 {
        let out = lab
            .runtime
            .exec(
                &id,
                &argv("cat /tmp/ready && hostname"),
                Duration::from_secs(5),
            )
            .expect("exec");
        if out.exit_code == Some(0) {
            found = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = found.expect("exec succeeded");
    assert!(out.output.contains("ready"), "{out:?}");
    assert!(out.output.contains("web-abc"), "{out:?}");
    let failed = lab
        .runtime
        .exec(&id, &argv("echo nope >&2; exit 4"), Duration::from_secs(5))
        .expect("exec");
    assert_eq!(failed.exit_code, Some(4));
    assert!(failed.output.contains("nope"));
    let started = Instant::now();
    let slow = lab
        .runtime
        .exec(&id, &argv("sleep 10"), Duration::from_millis(300))
        .expect("exec");
    assert_eq!(slow.exit_code, None, "timed out");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Containers started through the node's reaper keep their exit codes for an agent that did
/// not start them (an agent restarted after kill -9): the reaper is their parent and writes
/// the code down.
#[test]
fn the_reaper_keeps_exit_codes_across_agent_restarts() {
    let Some(lab) = Lab::new("the_reaper_keeps_exit_codes_across_agent_restarts") else {
        return;
    };
    let state = lab.dir.path().join("state");
    let reaper = tend::agent::runtime::reaper::ReaperClient::new(
        Path::new(env!("CARGO_BIN_EXE_tend")),
        &state,
        Path::new("runc"),
    );
    reaper.ensure_running().expect("reaper starts");
    let pid_file = state.join("reaper.pid");
    let reaper_pid: i32 = fs::read_to_string(&pid_file)
        .expect("reaper.pid")
        .trim()
        .parse()
        .expect("pid");
    struct KillReaper(i32);
    impl Drop for KillReaper {
        fn drop(&mut self) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _kill = KillReaper(reaper_pid);
    let first = Runc::new("runc", &state)
        .expect("runtime")
        .with_reaper(reaper.clone());
    let id = lab.run_on(
        &first,
        "reaped",
        "web-abc",
        &ImageConfig::default(),
        &shell("sleep 0.3; echo bye; exit 5"),
    );
    drop(first);
    // A new runtime, as a restarted agent has: it started nothing and is nobody's parent.
    let second = Runc::new("runc", &state).expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let s = second.state(&id).expect("state").expect("known to runc");
        if s.status == Status::Stopped && s.exit_code.is_some() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit code: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(state.exit_code, Some(5));
    second.delete(&id).expect("delete");
    assert!(
        !tend::agent::runtime::reaper::exit_path(&lab.dir.path().join("state/runc"), &id).exists(),
        "delete forgets the code"
    );
    // With nothing left to watch and its agent (this test) still here, the reaper stays.
    assert!(reaper.is_up());
}
