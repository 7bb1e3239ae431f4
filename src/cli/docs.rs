//! `tend docs cli` (hidden): the reference of every command and flag as markdown, rendered
//! from the clap definitions themselves, so that docs/cli.md cannot drift from the binary
//! (tests/docs.rs fails when the file differs from this rendering).

use clap::{Arg, ArgAction, Command};
use std::fmt::Write;

/// Flags of `tend docs`.
#[derive(Debug, Clone, clap::Args)]
pub struct DocsArgs {
    /// What to render: `cli` is docs/cli.md.
    #[arg(value_enum)]
    pub topic: Topic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topic {
    /// The command-line reference (docs/cli.md).
    Cli,
}

/// How to regenerate docs/cli.md; printed in the file and by the test that compares them.
pub const REGENERATE: &str = "cargo run -q -- docs cli > docs/cli.md";

/// docs/cli.md: the whole `tend` command tree.
pub fn cli_markdown() -> String {
    render(<super::Cli as clap::CommandFactory>::command())
}

/// Renders `root` and every visible subcommand, depth first, in declaration order.
pub fn render(mut root: Command) -> String {
    // Building sets every subcommand's bin name ("tend rollout undo") and propagates the
    // global flags, so that usages read as typed.
    root.build();
    let name = root.get_name().to_string();
    let mut out = String::new();
    let _ = writeln!(out, "# `{name}` command-line reference\n");
    let version = if root.get_version().is_some() {
        " and `-V`/`--version`"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "Generated from the command definitions by `{name} docs cli`; do not edit by hand.\n\
         Regenerate with `{REGENERATE}`. `{name} help COMMAND` and `{name} COMMAND --help`\n\
         print the same text. Every command also takes `-h`/`--help`{version}.\n"
    );
    if let Some(about) = root.get_long_about().or(root.get_about()) {
        let _ = writeln!(out, "{about}\n");
    }
    let _ = writeln!(out, "## Commands\n");
    contents(&root, &name, 0, &mut out);
    out.push('\n');
    let globals: Vec<&Arg> = visible_args(&root, true).collect();
    if !globals.is_empty() {
        let _ = writeln!(
            out,
            "## Global flags\n\nAccepted by every command, before or after it.\n"
        );
        for arg in globals {
            describe_arg(arg, &mut out);
        }
        out.push('\n');
    }
    for sub in visible_subcommands(&root) {
        section(sub, &[name.as_str()], 2, &mut out);
    }
    // One trailing newline, however the last section ended.
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

/// The flags and positionals a reader types, without help/version; `global` picks the global
/// flags (listed once, at the top) or everything else.
fn visible_args(cmd: &Command, global: bool) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(move |a| {
        !a.is_hide_set()
            && a.is_global_set() == global
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// A nested list of links to every command's section.
fn contents(cmd: &Command, path: &str, depth: usize, out: &mut String) {
    for sub in visible_subcommands(cmd) {
        let full = format!("{path} {}", sub.get_name());
        let about = sub
            .get_about()
            .map(|a| format!(": {}", first_line(&a.to_string())))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}- [`{full}`](#{}){about}",
            "  ".repeat(depth),
            anchor(&full)
        );
        contents(sub, &full, depth + 1, out);
    }
}

fn section(cmd: &Command, parents: &[&str], level: usize, out: &mut String) {
    let mut path: Vec<&str> = parents.to_vec();
    path.push(cmd.get_name());
    let full = path.join(" ");
    let _ = writeln!(out, "{} `{full}`\n", "#".repeat(level.min(6)));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{}\n", about.to_string().trim_end());
    }
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage:").trim();
    let _ = writeln!(out, "```\n{usage}\n```\n");
    let aliases: Vec<&str> = cmd.get_visible_aliases().collect();
    if !aliases.is_empty() {
        let _ = writeln!(out, "Aliases: `{}`.\n", aliases.join("`, `"));
    }
    let mut any = false;
    for arg in visible_args(cmd, false) {
        any = true;
        describe_arg(arg, out);
    }
    if any {
        out.push('\n');
    }
    for sub in visible_subcommands(cmd) {
        section(sub, &path, level + 1, out);
    }
}

/// `- `--state <DIR>`: help. Default: `x`. Environment: `X`. Values: ...`
fn describe_arg(arg: &Arg, out: &mut String) {
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(format!("-{s}"));
    }
    if let Some(l) = arg.get_long() {
        names.push(format!("--{l}"));
    }
    let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
    let value = arg
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_ascii_uppercase()));
    let mut head = if names.is_empty() {
        value
    } else if takes_value {
        format!("{} {value}", names.join(", "))
    } else {
        names.join(", ")
    };
    if matches!(arg.get_action(), ArgAction::Append) {
        head.push_str("...");
    }
    let mut line = format!("- `{head}`");
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| one_paragraph(&h.to_string()))
        .unwrap_or_default();
    if !help.is_empty() {
        let stop = if help.ends_with(['.', '!', '?']) {
            ""
        } else {
            "."
        };
        let _ = write!(line, ": {help}{stop}");
    }
    if arg.is_required_set() {
        line.push_str(" Required.");
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if takes_value && !defaults.iter().all(String::is_empty) && !arg.is_hide_default_value_set() {
        let _ = write!(line, " Default: `{}`.", defaults.join(","));
    }
    if let Some(env) = arg.get_env()
        && !arg.is_hide_env_set()
    {
        let _ = write!(line, " Environment: `{}`.", env.to_string_lossy());
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(h) => format!("`{}` ({})", v.get_name(), first_line(&h.to_string())),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    if takes_value && !values.is_empty() {
        let _ = write!(line, " Values: {}.", values.join(", "));
    }
    let _ = writeln!(out, "{line}");
}

/// A help text on one line (a list item), its paragraphs joined.
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// The anchor GitHub makes of a heading `` `tend rollout undo` ``: `tend-rollout-undo`.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Command {
        Command::new("tool")
            .about("A tool.")
            .arg(
                Arg::new("server")
                    .long("server")
                    .global(true)
                    .env("TOOL_SERVER")
                    .default_value("http://x")
                    .help("Where the server is."),
            )
            .subcommand(
                Command::new("run")
                    .about("Run it.\n\nLonger text.")
                    .arg(
                        Arg::new("replicas")
                            .long("replicas")
                            .short('r')
                            .value_name("N")
                            .required(true)
                            .help("How many."),
                    )
                    .arg(
                        Arg::new("labels")
                            .long("labels")
                            .default_value("")
                            .help("Labels, k=v"),
                    )
                    .arg(
                        Arg::new("quiet")
                            .long("quiet")
                            .action(ArgAction::SetTrue)
                            .help("Say less."),
                    )
                    .subcommand(Command::new("fast").about("Faster."))
                    .subcommand(Command::new("secret").hide(true)),
            )
            .subcommand(Command::new("hidden").hide(true))
    }

    #[test]
    fn renders_commands_flags_defaults_and_env_without_hidden_ones() {
        let md = render(sample());
        assert!(md.starts_with("# `tool` command-line reference\n"), "{md}");
        assert!(md.contains("- [`tool run`](#tool-run): Run it.\n"), "{md}");
        assert!(md.contains("  - [`tool run fast`](#tool-run-fast): Faster.\n"));
        assert!(md.contains(
            "- `--server <SERVER>`: Where the server is. Default: `http://x`. Environment: `TOOL_SERVER`.\n"
        ), "{md}");
        assert!(
            md.contains("## `tool run`\n\nRun it.\n\nLonger text.\n"),
            "{md}"
        );
        assert!(
            md.contains("- `-r, --replicas <N>`: How many. Required.\n"),
            "{md}"
        );
        assert!(md.contains("- `--quiet`: Say less.\n"), "{md}");
        // A full stop before what follows; no empty default.
        assert!(md.contains("- `--labels <LABELS>`: Labels, k=v.\n"), "{md}");
        assert!(md.contains("### `tool run fast`\n"), "{md}");
        assert!(
            md.contains("```\ntool run [OPTIONS] --replicas <N>"),
            "{md}"
        );
        // The global flag is listed once, not under every subcommand.
        assert_eq!(md.matches("--server <SERVER>`").count(), 1, "{md}");
        assert!(!md.contains("hidden") && !md.contains("secret"), "{md}");
        assert!(!md.contains("- `-h, --help`"), "{md}");
        assert!(md.ends_with(".\n") || md.ends_with("```\n"), "{md}");
    }

    #[test]
    fn anchors_are_githubs() {
        assert_eq!(anchor("tend rollout undo"), "tend-rollout-undo");
        assert_eq!(anchor("tend sim-node"), "tend-sim-node");
    }

    #[test]
    fn the_tend_tree_renders_every_visible_command() {
        let md = cli_markdown();
        for command in [
            "tend serve",
            "tend agent",
            "tend rollout undo",
            "tend completion",
        ] {
            assert!(md.contains(&format!("`{command}`\n")), "{command} in\n{md}");
        }
        assert!(!md.contains("agent-reaper"), "hidden command rendered");
        assert!(!md.contains("`tend docs`"), "hidden command rendered");
    }
}
