//! What the real-node tests of tests/lab.rs and tests/up.rs share: which tools are missing,
//! the skip-or-fail rule (a test may skip only by hand; with `CI` set a missing tool fails
//! it), and running commands. Included with `#[path]`.

use std::path::Path;
use std::process::{Command, Stdio};

/// What is missing of root, `tools` (looked up on PATH) and busybox-static.
pub fn missing(tools: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(tool.to_string());
        }
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (busybox-static)".to_string());
    }
    missing
}

/// Whether `test` can run (`what` needs `tools`); prints why not, or panics under CI.
pub fn possible(test: &str, what: &str, tools: &[&str]) -> bool {
    let missing = missing(tools);
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI is set and {what} needs {}", missing.join(", "));
    }
    eprintln!("SKIPPED {test}: {what} needs {}", missing.join(", "));
    false
}

/// Runs a command; its stdout. Panics with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command; its stdout when it succeeded.
pub fn quiet(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
