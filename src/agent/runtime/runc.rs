//! Containers as runc runs them: the [`ContainerRuntime`] trait, [`Runc`] (the `runc` binary
//! with its state under the agent's state) and [`RecordingRuntime`] (a fake that records).
//!
//! Exit codes: runc does not keep them (`runc state` says only `stopped`), so the agent is a
//! child subreaper ([`become_subreaper`]): a detached container's init re-parents to the
//! agent when `runc run -d` exits, and [`Runc`] reaps that one pid with `waitpid` once runc
//! reports it stopped. Waiting on the pid (rather than a blanket `waitpid(-1)`) leaves other
//! children to their owners; a general reaper elsewhere in the agent must skip the pids of
//! containers (see [`Runc::owns_pid`]) or their exit codes are lost.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn runc_name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// runc's status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub status: Status,
    /// The container's init on the node (0 once runc no longer knows it).
    pub pid: u32,
    /// Known once the container stopped and its init was reaped: the exit status, or 128 +
    /// the signal that killed it (as Kubernetes reports it).
    pub exit_code: Option<i32>,
    /// When runc created the container (runc's state says). An agent that restarts does not
    /// remember when the containers it adopts started: this is their start time.
    pub created: Option<jiff::Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("{command} for container {id:?} failed ({status}): {output}")]
    Failed {
        command: String,
        id: String,
        status: String,
        output: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot read runc's answer for {id:?}: {source}: {text:?}")]
    Parse {
        id: String,
        text: String,
        source: serde_json::Error,
    },
    #[error("container {id:?} does not exist")]
    NotFound { id: String },
    #[error("container {id:?} still runs {waited:?} after SIGTERM, SIGKILL included")]
    StillRunning { id: String, waited: Duration },
    #[error("cannot become a child subreaper (needed to read containers' exit codes): {0}")]
    Subreaper(io::Error),
}

/// The few things the agent asks of a container runtime.
pub trait ContainerRuntime: Send + Sync {
    /// Creates and starts `id` from the bundle in `bundle`, detached; its stdout and stderr
    /// go to [`ContainerRuntime::log_path`]. Returns the container's init pid.
    fn run(&self, id: &str, bundle: &Path) -> Result<u32, RuntimeError>;
    /// `None` when the runtime does not know `id`.
    fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError>;
    fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError>;
    /// Removes the container, killing it first if it still runs; unknown ids are fine.
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    fn list(&self) -> Result<Vec<ContainerState>, RuntimeError>;
    /// Where the container's stdout and stderr go.
    fn log_path(&self, id: &str) -> PathBuf;
    /// Runs `argv` inside the running container `id` (exec probes and hooks), killed after
    /// `timeout`. The exit code (`None` when it timed out) and its output, stdout then stderr.
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;
}

/// What [`ContainerRuntime::exec`] ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None` when the command was killed at its timeout.
    pub exit_code: Option<i32>,
    pub output: String,
}

/// How long [`stop`] waits for a container to go after SIGKILL before it gives up.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Stops `id` as the kubelet does: SIGTERM, then SIGKILL when it still runs after `grace`.
/// Returns the exit code when the runtime could read it. Does not delete the container.
pub fn stop(
    runtime: &dyn ContainerRuntime,
    id: &str,
    grace: Duration,
    poll: Duration,
) -> Result<Option<i32>, RuntimeError> {
    let stopped =
        |state: &Option<ContainerState>| state.as_ref().is_none_or(|s| s.status == Status::Stopped);
    let state = runtime.state(id)?;
    if !stopped(&state) {
        runtime.kill(id, Signal::Term)?;
        let deadline = Instant::now() + grace;
        loop {
            let state = runtime.state(id)?;
            if stopped(&state) {
                return Ok(state.and_then(|s| s.exit_code));
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(poll);
        }
        runtime.kill(id, Signal::Kill)?;
        // SIGKILL cannot be refused, but a process stuck in the kernel can take a while.
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let state = runtime.state(id)?;
            if stopped(&state) {
                return Ok(state.and_then(|s| s.exit_code));
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::StillRunning {
                    id: id.to_string(),
                    waited: grace + KILL_TIMEOUT,
                });
            }
            std::thread::sleep(poll);
        }
    }
    Ok(state.and_then(|s| s.exit_code))
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`), so
/// that detached containers stay its children.
pub fn become_subreaper() -> Result<(), RuntimeError> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(RuntimeError::Subreaper(io::Error::last_os_error()))
    }
}

/// The `runc` binary, with `--root <state>/runc` and logs in `<state>/logs/<id>.log`.
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    logs: PathBuf,
    /// Pids of containers this process started, and their exit codes once reaped.
    children: Mutex<BTreeMap<String, Child>>,
    /// Containers whose kept exit code was waited for already (see `kept_exit_code`).
    waited: Mutex<std::collections::BTreeSet<String>>,
    /// When set, containers are started by the node's reaper, which keeps their exit codes
    /// under `<root>/exits` (see [`super::reaper`]).
    reaper: Option<super::reaper::ReaperClient>,
}

#[derive(Debug, Clone, Copy)]
struct Child {
    pid: u32,
    exit_code: Option<i32>,
}

#[derive(Deserialize)]
struct RuncState {
    id: String,
    pid: u32,
    status: Status,
    #[serde(default)]
    created: Option<String>,
}

impl Runc {
    /// runc's state under `<state>/runc`, container logs under `<state>/logs`; both created.
    pub fn new(binary: impl Into<PathBuf>, state: &Path) -> Result<Self, RuntimeError> {
        let root = state.join("runc");
        let logs = state.join("logs");
        for dir in [&root, &logs] {
            fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Runc {
            binary: binary.into(),
            root,
            logs,
            children: Mutex::new(BTreeMap::new()),
            waited: Mutex::new(std::collections::BTreeSet::new()),
            reaper: None,
        })
    }

    /// Starts containers through the node's reaper (exit codes survive agent restarts).
    pub fn with_reaper(mut self, reaper: super::reaper::ReaperClient) -> Self {
        self.reaper = Some(reaper);
        self
    }

    /// The exit code the reaper kept for `id`, if any. runc may call an init stopped a moment
    /// before the reaper has reaped it and written the code: wait that moment (bounded).
    fn kept_exit_code(&self, id: &str) -> Option<i32> {
        let path = super::reaper::exit_path(&self.root, id);
        let read = || {
            fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
        };
        // Waited for once per container: one the reaper never saw (started before it, or
        // by another runtime) must not cost every later sync the same wait.
        if self.reaper.is_none() || !self.waited_for_exit().insert(id.to_string()) {
            return read();
        }
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            if let Some(code) = read() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether `pid` is the init of a container this runtime started and has not reaped yet.
    pub fn owns_pid(&self, pid: u32) -> bool {
        self.children()
            .values()
            .any(|c| c.pid == pid && c.exit_code.is_none())
    }

    fn waited_for_exit(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.waited
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn children(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Child>> {
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root);
        command
    }

    fn describe(&self, args: &[&str]) -> String {
        format!("{} {}", self.binary.display(), args.join(" "))
    }

    /// Runs a short runc command and returns its stdout; stderr goes into the error.
    fn output(&self, id: &str, args: &[&str]) -> Result<String, RuntimeError> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                command: self.describe(args),
                source,
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if stderr.contains("does not exist") {
                return Err(RuntimeError::NotFound { id: id.to_string() });
            }
            Err(RuntimeError::Failed {
                command: self.describe(args),
                id: id.to_string(),
                status: output.status.to_string(),
                output: stderr,
            })
        }
    }

    /// Reaps the container's init if it is our child and has exited; remembers the code.
    fn reap(&self, id: &str) -> Option<i32> {
        let mut children = self.children();
        let child = children.get_mut(id)?;
        if child.exit_code.is_none() {
            child.exit_code = reap_pid(child.pid);
        }
        child.exit_code
    }

    fn to_state(&self, state: RuncState) -> ContainerState {
        let exit_code = if state.status == Status::Stopped {
            self.reap(&state.id)
                .or_else(|| self.kept_exit_code(&state.id))
        } else {
            None
        };
        ContainerState {
            id: state.id,
            status: state.status,
            pid: state.pid,
            exit_code,
            created: state.created.and_then(|t| t.parse().ok()),
        }
    }
}

/// `waitpid(pid, WNOHANG)`: the exit code once `pid` (our child) has exited.
fn reap_pid(pid: u32) -> Option<i32> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes only to `status`, which lives for the call.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc != pid {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

/// `runc run -d` of `id` from `bundle`, its stdout and stderr appended to
/// `<logs>/<id>.log`; the init's pid. Its init re-parents to the caller's nearest child
/// subreaper (the agent, or the node's reaper).
pub fn start_detached(
    binary: &Path,
    root: &Path,
    logs: &Path,
    id: &str,
    bundle: &Path,
) -> Result<u32, RuntimeError> {
    let log_path = logs.join(format!("{id}.log"));
    let pid_file = root.join(format!("{id}.pid"));
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| RuntimeError::Io {
                path: log_path.clone(),
                source,
            })
    };
    let (stdout, stderr): (File, File) = (open_log()?, open_log()?);
    let bundle_arg = bundle.display().to_string();
    let pid_arg = pid_file.display().to_string();
    let args = [
        "run",
        "-d",
        "--pid-file",
        &pid_arg,
        "--bundle",
        &bundle_arg,
        id,
    ];
    let describe = format!("{} {}", binary.display(), args.join(" "));
    let status = Command::new(binary)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .map_err(|source| RuntimeError::Spawn {
            command: describe.clone(),
            source,
        })?;
    if !status.success() {
        // runc's own complaint is the last thing in the log.
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let output = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(RuntimeError::Failed {
            command: describe.clone(),
            id: id.to_string(),
            status: status.to_string(),
            output,
        });
    }
    let text = fs::read_to_string(&pid_file).map_err(|source| RuntimeError::Io {
        path: pid_file.clone(),
        source,
    })?;
    let _ = fs::remove_file(&pid_file);
    let pid: u32 = text.trim().parse().map_err(|_| RuntimeError::Failed {
        command: describe.clone(),
        id: id.to_string(),
        status: status.to_string(),
        output: format!("pid file {} holds {text:?}", pid_file.display()),
    })?;
    Ok(pid)
}

impl ContainerRuntime for Runc {
    fn run(&self, id: &str, bundle: &Path) -> Result<u32, RuntimeError> {
        if let Some(reaper) = &self.reaper {
            return reaper.run(id, bundle);
        }
        let pid = start_detached(&self.binary, &self.root, &self.logs, id, bundle)?;
        self.children().insert(
            id.to_string(),
            Child {
                pid,
                exit_code: None,
            },
        );
        Ok(pid)
    }

    fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let text = match self.output(id, &["state", id]) {
            Ok(text) => text,
            Err(RuntimeError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state: RuncState =
            serde_json::from_str(&text).map_err(|source| RuntimeError::Parse {
                id: id.to_string(),
                text: text.clone(),
                source,
            })?;
        Ok(Some(self.to_state(state)))
    }

    fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.output(id, &["kill", id, signal.runc_name()]).map(drop)
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        // Our own child must be killed and reaped first: runc waits for a zombie init to go,
        // and only its parent (this process) can make it go.
        let own = self
            .children()
            .get(id)
            .filter(|c| c.exit_code.is_none())
            .map(|c| c.pid);
        if own.is_some() {
            let _ = self.output(id, &["kill", id, "KILL"]);
            for _ in 0..200 {
                if self.reap(id).is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let result = match self.output(id, &["delete", "--force", id]) {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        // A forced delete kills the init; reap it so that it does not stay a zombie.
        let pid = self
            .children()
            .get(id)
            .filter(|c| c.exit_code.is_none())
            .map(|c| c.pid);
        if let Some(pid) = pid {
            for _ in 0..50 {
                if reap_pid(pid).is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.children().remove(id);
        self.waited_for_exit().remove(id);
        let _ = fs::remove_file(super::reaper::exit_path(&self.root, id));
        result
    }

    fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let text = self.output("", &["list", "--format", "json"])?;
        let states: Option<Vec<RuncState>> =
            serde_json::from_str(&text).map_err(|source| RuntimeError::Parse {
                id: String::new(),
                text: text.clone(),
                source,
            })?;
        Ok(states
            .unwrap_or_default()
            .into_iter()
            .map(|s| self.to_state(s))
            .collect())
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.logs.join(format!("{id}.log"))
    }

    fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        static EXECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = self.root.join(format!("{id}.exec.{n}"));
        let pid_path = self.root.join(format!("{id}.exec.{n}.pid"));
        let pid_arg = pid_path.to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec!["exec", "--pid-file", &pid_arg, id];
        args.extend(argv.iter().map(String::as_str));
        let describe = self.describe(&args);
        let out = File::create(&out_path).map_err(|source| RuntimeError::Io {
            path: out_path.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| RuntimeError::Io {
            path: out_path.clone(),
            source,
        })?;
        let mut child = self
            .command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                command: describe.clone(),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    // Kill the process in the container, not runc: runc then reaps it and
                    // exits. Killing runc would leave the process to this subreaper, and a
                    // container's init cannot finish while such a zombie of its namespace is
                    // left unreaped.
                    let pid = fs::read_to_string(&pid_path)
                        .ok()
                        .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
                    if let Some(pid) = pid {
                        // SAFETY: kill has no memory preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    let grace = Instant::now() + Duration::from_secs(2);
                    while matches!(child.try_wait(), Ok(None)) && Instant::now() < grace {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    let _ = fs::remove_file(&out_path);
                    return Err(RuntimeError::Spawn {
                        command: describe,
                        source,
                    });
                }
            }
        };
        let output = fs::read(&out_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&pid_path);
        let output = String::from_utf8_lossy(&output).into_owned();
        if status.is_some() && output.contains("does not exist") && self.state(id)?.is_none() {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        Ok(ExecOutput {
            exit_code: status.map(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            }),
            output,
        })
    }
}

/// What was asked of a [`RecordingRuntime`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Run { id: String, bundle: PathBuf },
    Kill { id: String, signal: Signal },
    Delete { id: String },
    Exec { id: String, argv: Vec<String> },
}

/// A runtime that runs nothing: it records calls and keeps states in memory. A container
/// stops on SIGTERM (exit 143) unless `ignores_term`, and always on SIGKILL (exit 137).
#[derive(Default)]
pub struct RecordingRuntime {
    pub ignores_term: bool,
    calls: Mutex<Vec<Call>>,
    containers: Mutex<BTreeMap<String, ContainerState>>,
    next_pid: Mutex<u32>,
    /// When set, `run` fails with this output (as runc does for a missing executable).
    pub run_error: Mutex<Option<String>>,
    /// Exit codes `exec` answers with, by the command's first word (0 when absent).
    pub exec_codes: Mutex<BTreeMap<String, i32>>,
}

impl RecordingRuntime {
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// Makes a container exit by itself with `code`, as if its process ended.
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(c) = lock(&self.containers).get_mut(id) {
            c.status = Status::Stopped;
            c.exit_code = Some(code);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ContainerRuntime for RecordingRuntime {
    fn run(&self, id: &str, bundle: &Path) -> Result<u32, RuntimeError> {
        lock(&self.calls).push(Call::Run {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
        });
        if let Some(output) = lock(&self.run_error).clone() {
            return Err(RuntimeError::Failed {
                command: "runc run".into(),
                id: id.to_string(),
                status: "exit status: 1".into(),
                output,
            });
        }
        let mut next = lock(&self.next_pid);
        *next += 1;
        let pid = 1000 + *next;
        lock(&self.containers).insert(
            id.to_string(),
            ContainerState {
                id: id.to_string(),
                status: Status::Running,
                pid,
                exit_code: None,
                created: None,
            },
        );
        Ok(pid)
    }

    fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        Ok(lock(&self.containers).get(id).cloned())
    }

    fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        lock(&self.calls).push(Call::Kill {
            id: id.to_string(),
            signal,
        });
        let mut containers = lock(&self.containers);
        let c = containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        if c.status == Status::Running && (signal == Signal::Kill || !self.ignores_term) {
            c.status = Status::Stopped;
            c.exit_code = Some(128 + if signal == Signal::Kill { 9 } else { 15 });
        }
        Ok(())
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        lock(&self.calls).push(Call::Delete { id: id.to_string() });
        lock(&self.containers).remove(id);
        Ok(())
    }

    fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        Ok(lock(&self.containers).values().cloned().collect())
    }

    fn log_path(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("/nonexistent/logs/{id}.log"))
    }

    fn exec(
        &self,
        id: &str,
        argv: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        lock(&self.calls).push(Call::Exec {
            id: id.to_string(),
            argv: argv.to_vec(),
        });
        let running = lock(&self.containers)
            .get(id)
            .is_some_and(|c| c.status == Status::Running);
        if !running {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        let first = argv.first().cloned().unwrap_or_default();
        let code = lock(&self.exec_codes).get(&first).copied().unwrap_or(0);
        Ok(ExecOutput {
            exit_code: Some(code),
            output: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn stop_sends_term_and_reads_the_exit_code() {
        let rt = RecordingRuntime::default();
        rt.run("c1", Path::new("/b")).expect("run");
        assert_eq!(
            stop(&rt, "c1", Duration::from_secs(5), MS).expect("stop"),
            Some(143)
        );
        assert_eq!(
            rt.calls(),
            vec![
                Call::Run {
                    id: "c1".into(),
                    bundle: "/b".into()
                },
                Call::Kill {
                    id: "c1".into(),
                    signal: Signal::Term
                },
            ]
        );
    }

    #[test]
    fn stop_kills_after_the_grace_period() {
        let rt = RecordingRuntime {
            ignores_term: true,
            ..RecordingRuntime::default()
        };
        rt.run("c1", Path::new("/b")).expect("run");
        assert_eq!(stop(&rt, "c1", 20 * MS, MS).expect("stop"), Some(137));
        let kills: Vec<Signal> = rt
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Kill { signal, .. } => Some(signal),
                _ => None,
            })
            .collect();
        assert_eq!(kills, vec![Signal::Term, Signal::Kill]);
    }

    #[test]
    fn stop_of_an_exited_or_unknown_container_sends_nothing() {
        let rt = RecordingRuntime::default();
        rt.run("c1", Path::new("/b")).expect("run");
        rt.exit("c1", 3);
        assert_eq!(
            stop(&rt, "c1", Duration::from_secs(1), MS).expect("stop"),
            Some(3)
        );
        assert_eq!(
            stop(&rt, "gone", Duration::from_secs(1), MS).expect("stop"),
            None
        );
        assert_eq!(rt.calls().len(), 1);
    }

    #[test]
    fn runc_state_parses() {
        let text = r#"{"ociVersion":"1.0.2-dev","id":"c1","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"2026-01-01T00:00:00Z","owner":""}"#;
        let s: RuncState = serde_json::from_str(text).expect("parse");
        assert_eq!(
            (s.id.as_str(), s.pid, s.status),
            ("c1", 42, Status::Running)
        );
        assert_eq!(s.created.as_deref(), Some("2026-01-01T00:00:00Z"));
        let none: Option<Vec<RuncState>> = serde_json::from_str("null").expect("null list");
        assert!(none.is_none());
    }
}
