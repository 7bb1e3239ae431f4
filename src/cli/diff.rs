//! `tend diff (--repo PATH | --dir PATH)`: what applying the given files would change on the
//! server, as unified diffs. Exit 0: no change, 1: changes, 2: error (invalid files included).
//! A repository with a work tree is read from the work tree (uncommitted edits included, as
//! `kubectl diff` reads local files); a bare repository from its branch head.

use crate::api::{Kind, ObjectKey};
use crate::manifest::{self, Diagnostic, Limits};
use crate::plan::{self, Plan, Scope};
use crate::source::dir::DirSource;
use crate::source::git::GitSource;
use crate::source::{FileState, Files, Source};
use anyhow::{Context, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// A git repository (its work tree, or for a bare repository its branch head).
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    pub repo: Option<PathBuf>,
    /// A directory of YAML files.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Subdirectory holding the manifests (as `serve --path`).
    #[arg(long)]
    pub path: Option<String>,
    /// Branch of a bare repository (default: its HEAD branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Colour: auto (on a terminal), always, never.
    #[arg(long, default_value = "auto")]
    pub color: String,
}

/// Reads the YAML files the flags name.
pub fn read_files(args: &DiffArgs) -> anyhow::Result<Files> {
    let max = Limits::default().max_file_bytes;
    let (mut source, _tmp): (Box<dyn Source>, Option<PathBuf>) = match (&args.repo, &args.dir) {
        (Some(repo), _) if repo.join(".git").exists() => {
            let root = match &args.path {
                Some(sub) => safe_join(repo, sub)?,
                None => repo.clone(),
            };
            (Box::new(DirSource::open(&root, max)?), None)
        }
        (Some(repo), _) => {
            let state = std::env::temp_dir().join(format!("tend-diff-{}", std::process::id()));
            let repo_str = repo.to_str().context("--repo: the path is not UTF-8")?;
            let git = GitSource::open(
                repo_str,
                args.branch.as_deref(),
                args.path.as_deref(),
                &state,
                max,
            )?;
            (Box::new(git), Some(state))
        }
        (None, Some(dir)) => (Box::new(DirSource::open(dir, max)?), None),
        (None, None) => bail!("give --repo PATH or --dir PATH"),
    };
    let files = match source.refresh()? {
        Some(head) => source.files(&head, None)?,
        None => Files {
            complete: true,
            files: BTreeMap::new(),
        },
    };
    if let Some(tmp) = _tmp {
        let _ = std::fs::remove_dir_all(tmp);
    }
    Ok(files)
}

fn safe_join(root: &Path, sub: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(sub);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("--path {sub:?}: must be a relative path inside the repository");
    }
    Ok(root.join(p))
}

/// The plan that applying `files` on top of `applied` would make, or the files' errors.
pub fn plan_files(
    files: &Files,
    applied: &BTreeMap<ObjectKey, Value>,
) -> Result<Plan, Vec<Diagnostic>> {
    let limits = Limits::default();
    let mut errors = Vec::new();
    let mut objects = Vec::new();
    for (path, state) in &files.files {
        match state {
            FileState::Present(bytes) => {
                let parsed = manifest::load_file(path, bytes, &limits);
                errors.extend(parsed.errors);
                objects.extend(parsed.objects);
            }
            FileState::Refused(reason) => errors.push(Diagnostic {
                file: path.clone(),
                line: 0,
                column: 0,
                path: String::new(),
                message: reason.clone(),
            }),
            FileState::Removed => {}
        }
    }
    errors.extend(manifest::validate_set(&objects));
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut desired = BTreeMap::new();
    for o in &objects {
        let mut body = plan::managed_body(&o.object, &o.file);
        if let Some(have) = applied.get(&o.key) {
            plan::carry_over_allocations(&mut body, have);
        }
        desired.insert(o.key.clone(), body);
    }
    Ok(plan::plan(&desired, applied, &Scope::All))
}

/// Runs `tend diff`; `list` fetches every object of a kind from the server.
pub fn run(
    args: DiffArgs,
    list: impl Fn(Kind) -> anyhow::Result<Vec<Value>>,
) -> anyhow::Result<ExitCode> {
    let files = read_files(&args)?;
    let mut applied = BTreeMap::new();
    for kind in [Kind::Deployment, Kind::Service] {
        for o in list(kind)? {
            if let Some(key) = ObjectKey::of(&o) {
                applied.insert(key, o);
            }
        }
    }
    let plan = match plan_files(&files, &applied) {
        Ok(plan) => plan,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let color = match args.color.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stdout().is_terminal(),
    };
    print!("{}", plan::diff::render(&plan, color));
    Ok(ExitCode::from(1))
}
