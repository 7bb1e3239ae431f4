//! The node's reaper: a small process that starts containers for the agent and keeps their
//! exit codes, so that an agent killed and restarted still reports how its containers ended.
//!
//! runc does not keep exit codes; only the parent of a container's init can read them. A
//! detached init re-parents to the nearest child subreaper above `runc run -d`: when the agent
//! itself starts runc, that is the agent, and an exit while the agent is down (or after it
//! restarted: the new agent is nobody's parent) is lost. So the agent asks a reaper, started
//! once per node in its own session, to run `runc run -d`: the inits become the reaper's, it
//! reaps them and writes each exit code to `<runc root>/exits/<id>`, which outlives any agent.
//!
//! Protocol over the Unix socket `<state>/reaper.sock`, one request per connection:
//! `RUN <id>\t<bundle>\t<agent pid>\n` answered `OK <pid>\n` or `ERR <message>\n`. The
//! reaper leaves when it has no child left and the agent that last asked is gone.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::runc::{RuntimeError, start_detached};

/// Where the reaper of the agent whose state is `state` listens.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join("reaper.sock")
}

/// Where the exit code of container `id` is kept (`<runc root>/exits/<id>`).
pub fn exit_path(runc_root: &Path, id: &str) -> PathBuf {
    runc_root.join("exits").join(id)
}

/// The agent's side: asks the reaper to start containers, starting the reaper when none
/// answers (the first run, or after the reaper left with nothing to watch).
#[derive(Debug, Clone)]
pub struct ReaperClient {
    socket: PathBuf,
    exe: PathBuf,
    state: PathBuf,
    runc: PathBuf,
}

impl ReaperClient {
    /// The reaper of the agent state `state`, started from `exe` (`tend`) with `runc`.
    pub fn new(exe: &Path, state: &Path, runc: &Path) -> Self {
        ReaperClient {
            socket: socket_path(state),
            exe: exe.to_path_buf(),
            state: state.to_path_buf(),
            runc: runc.to_path_buf(),
        }
    }

    /// Whether a reaper answers on the socket.
    pub fn is_up(&self) -> bool {
        UnixStream::connect(&self.socket).is_ok()
    }

    fn io(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io {
            path: self.socket.clone(),
            source,
        }
    }

    /// Starts `tend agent-reaper` in its own session unless one answers, and waits for it.
    pub fn ensure_running(&self) -> Result<(), RuntimeError> {
        if self.is_up() {
            return Ok(());
        }
        let mut command = Command::new(&self.exe);
        command
            .arg("agent-reaper")
            .arg("--state")
            .arg(&self.state)
            .arg("--runc")
            .arg(&self.runc)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: setsid is async-signal-safe; the reaper leaves the agent's session, so that
        // signals to the agent's process group (Ctrl-C, a service manager) do not reach it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| RuntimeError::Spawn {
            command: format!("{} agent-reaper", self.exe.display()),
            source,
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.is_up() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(RuntimeError::Failed {
                    command: format!("{} agent-reaper", self.exe.display()),
                    id: String::new(),
                    status: status.to_string(),
                    output: "the reaper stopped at once (its error is in the agent's log)".into(),
                });
            }
            if Instant::now() > deadline {
                return Err(self.io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the reaper did not listen within 10 s",
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Starts `id` from `bundle` through the reaper; its init's pid.
    pub fn run(&self, id: &str, bundle: &Path) -> Result<u32, RuntimeError> {
        let failed = |output: String| RuntimeError::Failed {
            command: format!("reaper at {}: RUN", self.socket.display()),
            id: id.to_string(),
            status: "refused".into(),
            output,
        };
        let mut stream = match UnixStream::connect(&self.socket) {
            Ok(stream) => stream,
            Err(_) => {
                self.ensure_running()?;
                UnixStream::connect(&self.socket).map_err(|e| self.io(e))?
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| self.io(e))?;
        writeln!(
            stream,
            "RUN {id}\t{}\t{}",
            bundle.display(),
            std::process::id()
        )
        .map_err(|e| self.io(e))?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .map_err(|e| self.io(e))?;
        let answer = answer.trim_end();
        if let Some(pid) = answer.strip_prefix("OK ") {
            return pid
                .parse()
                .map_err(|_| failed(format!("answered {answer:?}")));
        }
        Err(match answer.strip_prefix("ERR ") {
            Some(message) => failed(message.replace('\u{1}', "\n")),
            None => failed(format!("answered {answer:?}")),
        })
    }
}

/// One parsed request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Run {
        id: String,
        bundle: PathBuf,
        agent_pid: u32,
    },
}

/// Parses a request line; `None` for anything else.
pub fn parse_request(line: &str) -> Option<Request> {
    let rest = line.trim_end_matches(['\r', '\n']).strip_prefix("RUN ")?;
    let mut fields = rest.split('\t');
    let (id, bundle, agent) = (fields.next()?, fields.next()?, fields.next()?);
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (valid && !bundle.is_empty() && fields.next().is_none()).then_some(())?;
    Some(Request::Run {
        id: id.to_string(),
        bundle: PathBuf::from(bundle),
        agent_pid: agent.parse().ok()?,
    })
}

/// `tend agent-reaper`: serves until it has no child and the last agent that asked is gone.
pub fn serve(state: &Path, runc: &Path) -> Result<(), RuntimeError> {
    super::runc::become_subreaper()?;
    let root = state.join("runc");
    let logs = state.join("logs");
    let exits = root.join("exits");
    for dir in [&root, &logs, &exits] {
        fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let socket = socket_path(state);
    let _ = fs::remove_file(&socket);
    let io = |source: std::io::Error| RuntimeError::Io {
        path: socket.clone(),
        source,
    };
    // The pid file before the socket: whoever sees the reaper answer (`is_up`) finds it.
    let _ = fs::write(state.join("reaper.pid"), std::process::id().to_string());
    let listener = UnixListener::bind(&socket).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    let mut inits: BTreeMap<i32, String> = BTreeMap::new();
    // The agent that started the reaper is its parent until another one asks.
    // SAFETY: getppid has no preconditions.
    let mut agent_pid = unsafe { libc::getppid() };
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some((pid, id, agent)) = answer(stream, runc, &root, &logs) {
                    inits.insert(pid, id);
                    agent_pid = libc::pid_t::try_from(agent).unwrap_or(agent_pid);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io(e)),
        }
        // Reap whatever ended: container inits (their codes are kept), and orphans.
        let children = loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes only to `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break pid == 0;
            }
            let Some(id) = inits.remove(&pid) else {
                continue;
            };
            let code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
            let path = exit_path(&root, &id);
            let tmp = path.with_extension("tmp");
            if fs::write(&tmp, code.to_string())
                .and_then(|()| fs::rename(&tmp, &path))
                .is_err()
            {
                eprintln!("tend agent-reaper: cannot keep the exit code of {id}");
            }
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let agent_alive = unsafe { libc::kill(agent_pid, 0) } == 0;
        if !children && !agent_alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(state.join("reaper.pid"));
    Ok(())
}

/// Handles one connection: runs the container; its init's pid, id and the asking agent.
fn answer(stream: UnixStream, runc: &Path, root: &Path, logs: &Path) -> Option<(i32, String, u32)> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).ok()?;
    let mut out = &stream;
    let Some(Request::Run {
        id,
        bundle,
        agent_pid,
    }) = parse_request(&line)
    else {
        let _ = writeln!(out, "ERR cannot read the request {:?}", line.trim_end());
        return None;
    };
    // A code left by an earlier instance of the same id is not this one's.
    let _ = fs::remove_file(exit_path(root, &id));
    match start_detached(runc, root, logs, &id, &bundle) {
        Ok(pid) => {
            let _ = writeln!(out, "OK {pid}");
            i32::try_from(pid).ok().map(|p| (p, id, agent_pid))
        }
        Err(e) => {
            let _ = writeln!(out, "ERR {}", e.to_string().replace('\n', "\u{1}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_refuse_odd_ids() {
        assert_eq!(
            parse_request("RUN abc-1_x\t/var/lib/b\t42\n"),
            Some(Request::Run {
                id: "abc-1_x".into(),
                bundle: "/var/lib/b".into(),
                agent_pid: 42,
            })
        );
        assert_eq!(parse_request("RUN ../x\t/b\t1\n"), None);
        assert_eq!(parse_request("RUN ..\t/b\t1\n"), None);
        assert_eq!(parse_request("RUN x\t\t1\n"), None);
        assert_eq!(parse_request("RUN x\t/b\n"), None);
        assert_eq!(parse_request("RUN x\t/b\tnope\n"), None);
        assert_eq!(parse_request("KILL x\t/b\t1\n"), None);
    }
}
