//! The built `tend` binary as a user runs it: help, usage errors, an unreachable server.

use std::net::TcpListener;
use std::process::{Command, Output};

fn tend(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(args)
        .env_remove("TEND_SERVER")
        .env_remove("TEND_TOKEN")
        .env("TEND_STATE", "/nonexistent/tend-test-state")
        .output()
        .expect("run tend")
}

/// A URL where nothing listens: a port the OS just handed out and took back.
fn dead_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let out = tend(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "get", "describe", "version"] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
    assert_eq!(tend(&["get", "--help"]).status.code(), Some(0));
}

#[test]
fn version_prints_without_a_server() {
    let server = dead_server();
    let out = tend(&["--server", &server, "version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("tend {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unreachable_server_is_one_line_and_exit_2() {
    let server = dead_server();
    for args in [
        vec!["get", "pods"],
        vec!["describe", "deploy", "web"],
        vec!["get", "revisions", "4f2a"],
    ] {
        let mut full = vec!["--server", server.as_str()];
        full.extend(args.iter());
        let out = tend(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("error: cannot reach tend server at {server}: ")),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn unreachable_server_from_the_environment() {
    let server = dead_server();
    let out = Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(["get", "deployments"])
        .env("TEND_SERVER", &server)
        .output()
        .expect("run tend");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&server));
}

#[test]
fn unknown_kind_is_a_clear_error() {
    let out = tend(&["--server", &dead_server(), "get", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: unknown resource type \"bogus\": "),
        "{err}"
    );
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(tend(&["get"]).status.code(), Some(2));
    assert_eq!(tend(&["get", "pods", "-o", "xml"]).status.code(), Some(2));
    assert_eq!(tend(&["frobnicate"]).status.code(), Some(2));
    let out = tend(&["--server", "not a url", "get", "pods"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: invalid server URL \"not a url\""),
        "{}",
        stderr(&out)
    );
    let out = tend(&["get", "pods", "-l", "a b=c"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: invalid label selector"),
        "{}",
        stderr(&out)
    );
}
