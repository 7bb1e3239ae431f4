//! The systemd units in manifests/ start tend with flags it has, from settings tend.env
//! defines, and keep what must survive an agent restart.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const TEND: &str = env!("CARGO_BIN_EXE_tend");

fn read(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("manifests/{name}: {e}"))
}

/// `ExecStart=` with its continuation lines joined.
fn exec_start(unit: &str) -> String {
    let joined = unit.replace("\\\n", " ");
    joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart in\n{unit}"))
        .to_string()
}

fn help(subcommand: &str) -> String {
    let out = Command::new(TEND)
        .args([subcommand, "--help"])
        .output()
        .expect("tend runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_unit(file: &str, subcommand: &str) {
    let unit = read(file);
    let exec = exec_start(&unit);
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[0], "/usr/local/bin/tend", "{exec}");
    assert_eq!(words[1], subcommand, "{exec}");
    let help = help(subcommand);
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{file}: `tend {subcommand}` has no {flag}"
        );
    }
    let env = read("tend.env");
    let defined: BTreeSet<&str> = env
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for var in exec
        .split("${")
        .skip(1)
        .filter_map(|r| r.split_once('}'))
        .map(|(v, _)| v)
    {
        assert!(
            defined.contains(var),
            "{file} uses ${{{var}}}, which tend.env does not set"
        );
    }
}

#[test]
fn the_serve_unit_uses_real_flags_and_no_privilege() {
    check_unit("tend-serve.service", "serve");
    let unit = read("tend-serve.service");
    for line in [
        "DynamicUser=yes",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "StateDirectory=tend",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "tend-serve.service lacks {line}"
        );
    }
}

#[test]
fn the_agent_unit_uses_real_flags_and_keeps_containers_across_restarts() {
    check_unit("tend-agent.service", "agent");
    let unit = read("tend-agent.service");
    for line in ["KillMode=process", "Delegate=yes", "Restart=always"] {
        assert!(
            unit.lines().any(|l| l == line),
            "tend-agent.service lacks {line}"
        );
    }
}

#[test]
fn completion_scripts_are_generated_for_the_shells() {
    for (shell, marker) in [
        ("bash", "complete -F _tend"),
        ("zsh", "#compdef tend"),
        ("fish", "complete -c tend"),
    ] {
        let out = Command::new(TEND)
            .args(["completion", shell])
            .output()
            .expect("tend runs");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(200)]
        );
        assert!(script.contains("rollout"), "{shell} completes subcommands");
    }
    let bad = Command::new(TEND)
        .args(["completion", "nope"])
        .output()
        .expect("tend runs");
    assert_eq!(bad.status.code(), Some(2));
}
