//! `tend bench agent` refuses to start, in one line and with exit 2, when what it needs is
//! missing or its flags are wrong. The bench itself is not run here (minutes, root, the lab
//! tools): `tend bench agent` is run by hand on a release build.

use std::process::{Command, Output};

fn bench(args: &[&str], path: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(["bench", "agent"])
        .args(args)
        .env("PATH", path)
        .output()
        .expect("run tend")
}

fn one_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn missing_tools_are_all_named_in_one_line() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = bench(&[], empty.path().to_str().expect("utf-8"));
    let line = one_line(&out);
    assert!(line.contains("tend bench agent needs"), "{line}");
    for tool in [
        "runc (apt-get install runc)",
        "ip (apt-get install iproute2)",
        "nft (apt-get install nftables)",
        "docker-registry (apt-get install docker-registry)",
    ] {
        assert!(line.contains(tool), "{tool} not in: {line}");
    }
}

#[test]
fn unknown_figures_are_refused_before_anything_runs() {
    let out = bench(&["--only", "pods,speed"], "/usr/sbin:/usr/bin:/sbin:/bin");
    let line = one_line(&out);
    assert!(line.contains("unknown figure \"speed\""), "{line}");
    assert!(line.contains("pods, pull, memory"), "{line}");
}
