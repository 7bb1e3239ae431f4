//! docs/cli.md is the rendering of the clap command tree (`tend docs cli`): this fails when a
//! command or flag changed and the file was not regenerated.

use std::path::Path;
use std::process::Command;
use tend::cli::docs::{REGENERATE, cli_markdown};

#[test]
fn docs_cli_md_is_the_rendering_of_the_command_tree() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let rendered = cli_markdown();
    if on_disk != rendered {
        let first = on_disk
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(on_disk.lines().count().min(rendered.lines().count()));
        panic!(
            "docs/cli.md is out of date (first difference at line {}: {:?} vs {:?}); \
             regenerate it with `{REGENERATE}`",
            first + 1,
            on_disk.lines().nth(first).unwrap_or("<end>"),
            rendered.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

#[test]
fn tend_docs_cli_prints_the_same() {
    let out = Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(["docs", "cli"])
        .env_remove("TEND_SERVER")
        .env_remove("TEND_TOKEN")
        .output()
        .expect("tend runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), cli_markdown());
    let help = Command::new(env!("CARGO_BIN_EXE_tend"))
        .arg("--help")
        .output()
        .expect("tend runs");
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("docs"),
        "tend docs is hidden"
    );
}
