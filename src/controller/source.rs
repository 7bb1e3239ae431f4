//! The source controller: turns each new source revision into one store transaction holding
//! the changed objects and the revision record, or, when any file is invalid, a Rejected
//! revision record and nothing else (the last good state keeps serving).
//!
//! Work follows the change: files are parsed only when a revision changes them (git tree
//! diff), the plan covers only objects of files changed since the last applied revision, and
//! the applied objects it needs are read by key.

use crate::api::{Kind, ObjectKey, ObjectMeta, SOURCE_FILE_ANNOTATION, SOURCE_REVISION_ANNOTATION};
use crate::controller::alloc::Allocator;
use crate::manifest::set_index::SetIndex;
use crate::manifest::{self, Diagnostic, Limits, ParsedFile};
use crate::plan::{self, Action, CHANGE_CAUSE_ANNOTATION, Scope};
use crate::source::{FileState, RevisionInfo, Source, SourceError};
use crate::store::{Op, Store, StoreError};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--service-cidr: {0}")]
    Config(String),
}

/// Phases of a revision record.
pub const APPLIED: &str = "Applied";
pub const REJECTED: &str = "Rejected";
pub const PENDING: &str = "Pending";
pub const SUPERSEDED: &str = "Superseded";

/// What one sync did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub revision: String,
    pub phase: &'static str,
    pub created: usize,
    pub updated: usize,
    pub pruned: usize,
    pub errors: Vec<String>,
    pub superseded: Vec<String>,
}

/// Applies source revisions to the store.
pub struct SourceController {
    store: Arc<dyn Store>,
    limits: Limits,
    allocator: Allocator,
    /// Parsed files of the revision `parsed_rev`.
    files: BTreeMap<String, ParsedFile>,
    /// The checks across files over `files`, kept up to date with it: a commit checks its
    /// changed files against the others without rescanning them.
    set_index: SetIndex,
    /// The files of `files` with errors of their own.
    error_files: BTreeSet<String>,
    parsed_rev: Option<String>,
    /// Files changed since the last applied revision (the plan's scope).
    dirty: BTreeSet<String>,
    /// Whether the next plan must cover everything (first sync after start).
    full: bool,
    /// The newest revision seen (recorded in any phase).
    seen_rev: Option<String>,
    /// The newest revision applied or rejected: until `seen_rev` is, a sync retries it.
    settled_rev: Option<String>,
    /// Revisions recorded as Pending and not settled since. Only the head may stay Pending:
    /// one left behind by a failed apply or a crash between its record and its apply is
    /// marked Superseded when a newer head arrives.
    pending: BTreeSet<String>,
    /// Applied managed objects by source file.
    applied_by_file: HashMap<String, BTreeSet<ObjectKey>>,
    /// The reverse of `applied_by_file`.
    file_of: HashMap<ObjectKey, String>,
    next_sequence: u64,
    /// Where the last sync's time went, by step (logged with its outcome).
    phases: Phases,
}

/// The time of each step of one sync, for the log line that reports it (profiling a commit
/// on top of many objects needs no debugger: `RUST_LOG=tend=info` shows which step grew).
#[derive(Debug, Default, Clone)]
struct Phases(Vec<(&'static str, std::time::Duration)>);

impl Phases {
    /// Records that `step` took the time since `since`, and returns now.
    fn lap(&mut self, step: &'static str, since: Instant) -> Instant {
        let now = Instant::now();
        self.0.push((step, now.duration_since(since)));
        now
    }
}

impl std::fmt::Display for Phases {
    /// `record=0.4ms load=1.2ms ...`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, took)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{step}={:.1}ms", took.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

impl SourceController {
    /// Rebuilds the controller's memory from the store: allocations, the applied objects'
    /// files, and the revision sequence.
    pub fn new(
        store: Arc<dyn Store>,
        service_cidr: &str,
        limits: Limits,
    ) -> Result<Self, ApplyError> {
        let mut allocator = Allocator::new(service_cidr).map_err(ApplyError::Config)?;
        let mut applied_by_file: HashMap<String, BTreeSet<ObjectKey>> = HashMap::new();
        let mut file_of = HashMap::new();
        for kind in [Kind::Deployment, Kind::Service, Kind::Endpoints] {
            let (objects, _) = store.list(kind, None)?;
            for o in &objects {
                let Some(key) = ObjectKey::of(o) else {
                    continue;
                };
                if kind == Kind::Service {
                    allocator.record(&key, o);
                }
                if plan::is_managed(o)
                    && let Some(file) = o.annotation(SOURCE_FILE_ANNOTATION)
                {
                    applied_by_file
                        .entry(file.to_string())
                        .or_default()
                        .insert(key.clone());
                    file_of.insert(key, file.to_string());
                }
            }
        }
        let (revisions, _) = store.list(Kind::Revision, None)?;
        let newest = revisions.iter().max_by_key(|r| {
            r.pointer("/spec/sequence")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        });
        let next_sequence = newest
            .and_then(|r| r.pointer("/spec/sequence").and_then(Value::as_u64))
            .map_or(1, |s| s + 1);
        let pending = revisions
            .iter()
            .filter(|r| r.pointer("/status/phase").and_then(Value::as_str) == Some(PENDING))
            .filter_map(|r| r.meta_str("name").map(str::to_string))
            .collect();
        Ok(SourceController {
            store,
            limits,
            allocator,
            files: BTreeMap::new(),
            set_index: SetIndex::default(),
            error_files: BTreeSet::new(),
            parsed_rev: None,
            dirty: BTreeSet::new(),
            full: true,
            seen_rev: newest.and_then(|r| r.meta_str("name")).map(str::to_string),
            settled_rev: None,
            pending,
            applied_by_file,
            file_of,
            next_sequence,
            phases: Phases::default(),
        })
    }

    /// Brings the store up to the source's newest revision. Returns `None` when there was
    /// nothing new.
    pub fn sync(&mut self, source: &mut dyn Source) -> Result<Option<Outcome>, ApplyError> {
        let started = Instant::now();
        let Some(head) = source.refresh()? else {
            return Ok(None);
        };
        if !self.full && self.settled_rev.as_deref() == Some(head.as_str()) {
            return Ok(None);
        }
        let revisions = if self.seen_rev.as_deref() == Some(head.as_str()) {
            source.revisions(None, &head)?
        } else {
            source.revisions(self.seen_rev.as_deref(), &head)?
        };
        let Some(head_info) = revisions.last().cloned() else {
            return Ok(None);
        };
        self.phases = Phases::default();
        let lap = self.phases.lap("refresh", started);
        let superseded = self.record_arrivals(source, &revisions)?;
        self.seen_rev = Some(head.clone());
        let lap = self.phases.lap("record", lap);

        self.load_files(source, &head)?;
        self.phases.lap("load", lap);
        let outcome = self.apply(&head_info, superseded)?;
        self.pending.remove(&head);
        self.settled_rev = Some(head.clone());
        tracing::info!(
            revision = %head_info.short_id(),
            phase = outcome.phase,
            created = outcome.created,
            updated = outcome.updated,
            pruned = outcome.pruned,
            errors = outcome.errors.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            phases = %self.phases,
            "{} {}",
            outcome.phase.to_lowercase(),
            head_info.subject()
        );
        // The record keeps every error; the log shows the first ones.
        const LOGGED: usize = 20;
        for e in outcome.errors.iter().take(LOGGED) {
            tracing::warn!(revision = %head_info.short_id(), "{e}");
        }
        if outcome.errors.len() > LOGGED {
            tracing::warn!(
                revision = %head_info.short_id(),
                "... and {} more errors (tend describe revision {})",
                outcome.errors.len() - LOGGED,
                head_info.short_id()
            );
        }
        Ok(Some(outcome))
    }

    /// Records every new revision: the newest as Pending, the ones it hides as Superseded.
    fn record_arrivals(
        &mut self,
        source: &dyn Source,
        revisions: &[RevisionInfo],
    ) -> Result<Vec<String>, ApplyError> {
        let mut ops = Vec::new();
        let mut superseded = Vec::new();
        let last = revisions.len().saturating_sub(1);
        let Some(head) = revisions.get(last) else {
            return Ok(superseded);
        };
        let message = json!(format!("superseded by {}", head.short_id()));
        let mut sequence = self.next_sequence;
        for (i, info) in revisions.iter().enumerate() {
            let key = ObjectKey::new(Kind::Revision, "", &info.id);
            if self.store.get(&key)?.is_some() {
                continue;
            }
            let phase = if i == last { PENDING } else { SUPERSEDED };
            if i != last {
                superseded.push(info.id.clone());
            }
            let mut record = revision_record(info, &source.describe(), sequence);
            sequence += 1;
            record["status"] = json!({"phase": phase, "errors": [], "warnings": []});
            if i != last {
                record["status"]["message"] = message.clone();
            }
            ops.push(Op::Put {
                object: record,
                expect_rv: None,
            });
        }
        // Older revisions still Pending were never applied (their apply failed, or serve
        // stopped between their record and their apply): the new head supersedes them.
        let stale: Vec<String> = self
            .pending
            .iter()
            .filter(|id| **id != head.id)
            .cloned()
            .collect();
        for id in &stale {
            let key = ObjectKey::new(Kind::Revision, "", id);
            let Some(record) = self.store.get(&key)? else {
                continue;
            };
            if record.pointer("/status/phase").and_then(Value::as_str) != Some(PENDING) {
                continue;
            }
            let mut status = record.get("status").cloned().unwrap_or_else(|| json!({}));
            status["phase"] = json!(SUPERSEDED);
            status["message"] = message.clone();
            ops.push(Op::PutStatus {
                key,
                status,
                expect_rv: Some(record.resource_version()),
            });
            superseded.push(id.clone());
        }
        if !ops.is_empty() {
            self.store.commit(ops)?;
        }
        self.next_sequence = sequence;
        for id in &stale {
            self.pending.remove(id);
        }
        self.pending.insert(head.id.clone());
        Ok(superseded)
    }

    /// Parses the files of `head` that changed since the last parsed revision.
    fn load_files(&mut self, source: &mut dyn Source, head: &str) -> Result<(), ApplyError> {
        if self.parsed_rev.as_deref() == Some(head) {
            return Ok(());
        }
        let files = source.files(head, self.parsed_rev.as_deref())?;
        if files.complete {
            self.dirty.extend(self.files.keys().cloned());
            self.files.clear();
            self.set_index = SetIndex::default();
            self.error_files.clear();
        }
        for (path, state) in files.files {
            self.dirty.insert(path.clone());
            let parsed = match state {
                FileState::Removed => None,
                FileState::Refused(reason) => {
                    let error = Diagnostic {
                        file: path.clone(),
                        line: 0,
                        column: 0,
                        path: String::new(),
                        message: reason,
                    };
                    Some(ParsedFile {
                        errors: vec![error],
                        ..Default::default()
                    })
                }
                FileState::Present(bytes) => Some(manifest::load_file(&path, &bytes, &self.limits)),
            };
            self.set_file(path, parsed);
        }
        self.parsed_rev = Some(head.to_string());
        Ok(())
    }

    /// Replaces (or with `None` removes) a parsed file, and the indexes that follow `files`.
    fn set_file(&mut self, path: String, parsed: Option<ParsedFile>) {
        if let Some(old) = self.files.remove(&path) {
            self.set_index.remove_file(&path, &old);
        }
        self.error_files.remove(&path);
        let Some(parsed) = parsed else {
            return;
        };
        self.set_index.add_file(&path, &parsed);
        if !parsed.errors.is_empty() {
            self.error_files.insert(path.clone());
        }
        self.files.insert(path, parsed);
    }

    fn apply(
        &mut self,
        info: &RevisionInfo,
        superseded: Vec<String>,
    ) -> Result<Outcome, ApplyError> {
        let started = Instant::now();
        let mut errors: Vec<String> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        // Only the files with errors and (after the first sync) the changed files are walked.
        for path in &self.error_files {
            if let Some(parsed) = self.files.get(path) {
                errors.extend(parsed.errors.iter().map(Diagnostic::to_string));
            }
        }
        let warned: Box<dyn Iterator<Item = &String>> = if self.full {
            Box::new(self.files.keys())
        } else {
            Box::new(self.dirty.iter())
        };
        for path in warned {
            if let Some(parsed) = self.files.get(path) {
                warnings.extend(parsed.warnings.iter().map(Diagnostic::to_string));
            }
        }
        let set_errors = self.set_index.errors();
        let lap = self.phases.lap("check", started);
        // A clash inside the source is already named by the set check; allocating would only
        // report it a second time.
        let allocate = set_errors.is_empty();
        errors.extend(set_errors.iter().map(Diagnostic::to_string));

        // Desired objects in scope, and the applied objects they are compared with.
        let scope = if self.full {
            Scope::All
        } else {
            Scope::Files(self.dirty.clone())
        };
        let mut desired: BTreeMap<ObjectKey, (Value, String, usize)> = BTreeMap::new();
        for (path, parsed) in &self.files {
            if !self.full && !self.dirty.contains(path) {
                continue;
            }
            for o in &parsed.objects {
                desired.insert(
                    o.key.clone(),
                    (
                        plan::managed_body(&o.object, &o.file),
                        o.file.clone(),
                        o.line,
                    ),
                );
            }
        }
        let applied = self.applied_in_scope(&desired)?;
        let lap = self.phases.lap("read", lap);

        // Allocation in place; what it touches is saved first and put back unless the
        // revision is applied (a copy of the whole allocator costs O(Services) per commit).
        let saved = self.allocator.save(
            desired
                .keys()
                .chain(applied.keys())
                .filter(|k| k.kind == Kind::Service),
        );
        let allocator = &mut self.allocator;
        for (key, have) in &applied {
            if key.kind == Kind::Service && !desired.contains_key(key) && plan::is_managed(have) {
                allocator.release(key);
            }
        }
        for (key, (body, file, line)) in desired.iter_mut() {
            if key.kind != Kind::Service {
                continue;
            }
            if let Some(have) = applied.get(key) {
                plan::carry_over_allocations(body, have);
            }
            if !allocate {
                continue;
            }
            for e in allocator.assign(key, body) {
                errors.push(format!("{file}:{line}: {}: {}", e.path, e.message));
            }
        }

        let bodies: BTreeMap<ObjectKey, Value> = desired
            .iter()
            .map(|(k, (b, _, _))| (k.clone(), b.clone()))
            .collect();
        // One line each, whatever a file name or value holds: a newline in a file name
        // must not forge a second error, nor an escape sequence reach a terminal.
        let errors: Vec<String> = errors.iter().map(|e| manifest::one_line(e)).collect();
        let warnings: Vec<String> = warnings.iter().map(|e| manifest::one_line(e)).collect();
        let the_plan = plan::plan(&bodies, &applied, &scope);
        let lap = self.phases.lap("plan", lap);
        let (created, updated, pruned) = the_plan.counts();
        let record_key = ObjectKey::new(Kind::Revision, "", &info.id);

        if !errors.is_empty() {
            self.allocator.restore(saved);
            let status = json!({"phase": REJECTED, "errors": errors, "warnings": warnings,
                "changes": {"created": 0, "updated": 0, "pruned": 0}, "objects": []});
            self.store.commit(vec![Op::PutStatus {
                key: record_key,
                status,
                expect_rv: None,
            }])?;
            return Ok(Outcome {
                revision: info.id.clone(),
                phase: REJECTED,
                created: 0,
                updated: 0,
                pruned: 0,
                errors,
                superseded,
            });
        }

        let already_applied = the_plan.is_empty()
            && match self.store.get(&record_key) {
                Ok(record) => {
                    record.and_then(|r| r.pointer("/status/phase").cloned()) == Some(json!(APPLIED))
                }
                Err(e) => {
                    self.allocator.restore(saved);
                    return Err(e.into());
                }
            };
        if already_applied {
            self.allocator.restore(saved);
            self.dirty.clear();
            self.full = false;
            return Ok(Outcome {
                revision: info.id.clone(),
                phase: APPLIED,
                created: 0,
                updated: 0,
                pruned: 0,
                errors: Vec::new(),
                superseded,
            });
        }
        let change_cause = format!("{} {}", info.short_id(), info.subject());
        let mut ops = Vec::with_capacity(the_plan.actions.len() + 1);
        let mut changed = Vec::new();
        for action in &the_plan.actions {
            changed.push(action.key().to_string());
            match action {
                Action::Create { object, .. } | Action::Update { after: object, .. } => {
                    let mut object = object.clone();
                    // The change cause names the commit that last changed the pod template
                    // (what `rollout history` shows); a scale or pause keeps the old one.
                    let cause = match action {
                        Action::Update { before, after, .. }
                            if before.pointer("/spec/template")
                                == after.pointer("/spec/template") =>
                        {
                            before
                                .annotation(CHANGE_CAUSE_ANNOTATION)
                                .map(str::to_string)
                        }
                        _ => None,
                    }
                    .unwrap_or_else(|| change_cause.clone());
                    if let Some(Value::Object(ann)) = object.pointer_mut("/metadata/annotations") {
                        ann.insert(SOURCE_REVISION_ANNOTATION.into(), info.id.clone().into());
                        if action.key().kind == Kind::Deployment {
                            ann.insert(CHANGE_CAUSE_ANNOTATION.into(), cause.into());
                        }
                    }
                    ops.push(Op::Put {
                        object,
                        expect_rv: None,
                    });
                }
                Action::Prune { key, .. } => ops.push(Op::Delete {
                    key: key.clone(),
                    expect_rv: None,
                }),
            }
        }
        let status = json!({"phase": APPLIED, "errors": [], "warnings": warnings,
            "changes": {"created": created, "updated": updated, "pruned": pruned}, "objects": changed});
        ops.push(Op::PutStatus {
            key: record_key,
            status,
            expect_rv: None,
        });
        let committed = match self.store.commit(ops) {
            Ok(committed) => committed,
            Err(e) => {
                self.allocator.restore(saved);
                return Err(e.into());
            }
        };
        let lap = self.phases.lap("commit", lap);

        // The transaction is durable: now the memory may follow it.
        for (action, stored) in the_plan.actions.iter().zip(&committed.objects) {
            let key = action.key();
            if let Some(old) = self.file_of.remove(key)
                && let Some(keys) = self.applied_by_file.get_mut(&old)
            {
                keys.remove(key);
                // Dropped here rather than by a walk over every file after the loop.
                if keys.is_empty() {
                    self.applied_by_file.remove(&old);
                }
            }
            if let Action::Prune { .. } = action {
                continue;
            }
            if let Some(file) = stored.annotation(SOURCE_FILE_ANNOTATION) {
                self.applied_by_file
                    .entry(file.to_string())
                    .or_default()
                    .insert(key.clone());
                self.file_of.insert(key.clone(), file.to_string());
            }
            if key.kind == Kind::Service {
                self.allocator.record(key, stored);
            }
        }
        self.dirty.clear();
        self.full = false;
        self.phases.lap("remember", lap);
        Ok(Outcome {
            revision: info.id.clone(),
            phase: APPLIED,
            created,
            updated,
            pruned,
            errors: Vec::new(),
            superseded,
        })
    }

    /// The applied objects a plan over `desired` needs: all managed ones for a full plan, else
    /// the desired keys plus the objects of the dirty files, read by key.
    fn applied_in_scope(
        &self,
        desired: &BTreeMap<ObjectKey, (Value, String, usize)>,
    ) -> Result<BTreeMap<ObjectKey, Value>, ApplyError> {
        let mut applied = BTreeMap::new();
        if self.full {
            for kind in [Kind::Deployment, Kind::Service, Kind::Endpoints] {
                for o in self.store.list(kind, None)?.0 {
                    if let Some(key) = ObjectKey::of(&o) {
                        applied.insert(key, o);
                    }
                }
            }
            return Ok(applied);
        }
        let mut keys: BTreeSet<&ObjectKey> = desired.keys().collect();
        for file in &self.dirty {
            if let Some(ks) = self.applied_by_file.get(file) {
                keys.extend(ks.iter());
            }
        }
        for key in keys {
            if let Some(o) = self.store.get(key)? {
                applied.insert(key.clone(), o);
            }
        }
        Ok(applied)
    }
}

/// The stored record of a source revision (`tend.dev/v1` Revision), without status.
pub fn revision_record(info: &RevisionInfo, source: &str, sequence: u64) -> Value {
    let time = jiff::Timestamp::from_second(info.time)
        .map(|t| t.to_string())
        .unwrap_or_default();
    json!({
        "apiVersion": "tend.dev/v1",
        "kind": "Revision",
        "metadata": {"name": info.id},
        "spec": {
            "message": info.message,
            "author": info.author,
            "time": time,
            "parent": info.parent,
            "source": source,
            "sequence": sequence,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Files;
    use crate::store::memory::MemoryStore;
    use std::sync::Mutex;

    /// The `files(id, base)` calls a fake source received.
    type FileCalls = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// A source whose revisions are given by the test; records the `files` calls it gets.
    #[derive(Default)]
    struct FakeSource {
        commits: Vec<(RevisionInfo, BTreeMap<String, Vec<u8>>)>,
        head: usize,
        calls: FileCalls,
    }

    impl FakeSource {
        fn commit(&mut self, message: &str, files: &[(&str, &str)]) -> String {
            let mut tree = self.commits.last().map(|c| c.1.clone()).unwrap_or_default();
            for (path, text) in files {
                if text.is_empty() {
                    tree.remove(*path);
                } else {
                    tree.insert(path.to_string(), text.as_bytes().to_vec());
                }
            }
            let id = format!("{:040x}", self.commits.len() + 1);
            let parent = self.commits.last().map(|c| c.0.id.clone());
            let info = RevisionInfo {
                id: id.clone(),
                parent,
                message: message.into(),
                author: "T <t@t>".into(),
                time: 0,
            };
            self.commits.push((info, tree));
            id
        }
        fn publish(&mut self) {
            self.head = self.commits.len();
        }
        fn index(&self, id: &str) -> usize {
            self.commits.iter().position(|c| c.0.id == id).unwrap()
        }
    }

    impl Source for FakeSource {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn refresh(&mut self) -> Result<Option<String>, SourceError> {
            Ok(self
                .head
                .checked_sub(1)
                .map(|i| self.commits[i].0.id.clone()))
        }
        fn revisions(
            &mut self,
            since: Option<&str>,
            head: &str,
        ) -> Result<Vec<RevisionInfo>, SourceError> {
            let end = self.index(head);
            let start = since.map_or(end, |s| self.index(s) + 1);
            Ok(self.commits[start..=end]
                .iter()
                .map(|c| c.0.clone())
                .collect())
        }
        fn files(&mut self, id: &str, base: Option<&str>) -> Result<Files, SourceError> {
            self.calls
                .lock()
                .unwrap()
                .push((id.to_string(), base.map(String::from)));
            let tree = &self.commits[self.index(id)].1;
            let Some(base) = base else {
                let files = tree
                    .iter()
                    .map(|(p, b)| (p.clone(), FileState::Present(b.clone())))
                    .collect();
                return Ok(Files {
                    complete: true,
                    files,
                });
            };
            let old = &self.commits[self.index(base)].1;
            let mut files = BTreeMap::new();
            for (p, b) in tree {
                if old.get(p) != Some(b) {
                    files.insert(p.clone(), FileState::Present(b.clone()));
                }
            }
            for p in old.keys().filter(|p| !tree.contains_key(*p)) {
                files.insert(p.clone(), FileState::Removed);
            }
            Ok(Files {
                complete: false,
                files,
            })
        }
        fn watch(
            &self,
            _notify: tokio::sync::mpsc::Sender<()>,
        ) -> Result<Box<dyn Send>, SourceError> {
            Ok(Box::new(()))
        }
    }

    fn deployment(name: &str, image: &str) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: c\n        image: {image}\n"
        )
    }

    fn service(name: &str, node_port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n    nodePort: {node_port}\n"
        )
    }

    fn setup() -> (Arc<dyn Store>, SourceController, FakeSource) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let controller =
            SourceController::new(store.clone(), "10.96.0.0/12", Limits::default()).unwrap();
        (store, controller, FakeSource::default())
    }

    fn image(store: &Arc<dyn Store>, name: &str) -> Option<String> {
        let d = store
            .get(&ObjectKey::new(Kind::Deployment, "default", name))
            .unwrap()?;
        d.pointer("/spec/template/spec/containers/0/image")
            .and_then(Value::as_str)
            .map(String::from)
    }

    #[test]
    fn applies_then_follows_only_the_changed_files() {
        let (store, mut c, mut src) = setup();
        src.commit(
            "two apps",
            &[
                ("a.yaml", &deployment("a", "a:v1")),
                ("b.yaml", &deployment("b", "b:v1")),
            ],
        );
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!((out.phase, out.created), (APPLIED, 2));
        let b_rv = store
            .get(&ObjectKey::new(Kind::Deployment, "default", "b"))
            .unwrap()
            .unwrap()
            .resource_version();

        let second = src.commit("a to v2", &[("a.yaml", &deployment("a", "a:v2"))]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!((out.phase, out.created, out.updated), (APPLIED, 0, 1));
        assert_eq!(image(&store, "a").as_deref(), Some("a:v2"));
        let b = store
            .get(&ObjectKey::new(Kind::Deployment, "default", "b"))
            .unwrap()
            .unwrap();
        assert_eq!(
            b.resource_version(),
            b_rv,
            "the unchanged object is not touched"
        );
        // The second sync asked for a delta against the first revision, not the whole tree.
        let calls = src.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1], (second, Some(format!("{:040x}", 1))));
        assert!(c.sync(&mut src).unwrap().is_none(), "nothing new");
    }

    #[test]
    fn the_change_cause_follows_template_changes_only() {
        let (store, mut c, mut src) = setup();
        let with_replicas = |image: &str, n: u32| {
            deployment("a", image).replacen("spec:\n", &format!("spec:\n  replicas: {n}\n"), 1)
        };
        let v1 = src.commit("v1", &[("a.yaml", &with_replicas("a:v1", 3))]);
        src.publish();
        assert_eq!(c.sync(&mut src).unwrap().unwrap().phase, APPLIED);
        src.commit("scale to 4", &[("a.yaml", &with_replicas("a:v1", 4))]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!((out.phase, out.updated), (APPLIED, 1), "{out:?}");
        let deployment_now = |store: &Arc<dyn Store>| {
            store
                .get(&ObjectKey::new(Kind::Deployment, "default", "a"))
                .unwrap()
                .unwrap()
        };
        let d = deployment_now(&store);
        assert_eq!(d["spec"]["replicas"], 4);
        assert_eq!(
            d.annotation(CHANGE_CAUSE_ANNOTATION),
            Some(format!("{} v1", &v1[..7])).as_deref()
        );
        assert_eq!(
            d.annotation(SOURCE_REVISION_ANNOTATION),
            Some(format!("{:040x}", 2)).as_deref()
        );
        src.commit("v2", &[("a.yaml", &with_replicas("a:v2", 4))]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!((out.phase, out.updated), (APPLIED, 1), "{out:?}");
        let d = deployment_now(&store);
        assert_eq!(
            d.annotation(CHANGE_CAUSE_ANNOTATION),
            Some(format!("{} v2", &v1[..7])).as_deref()
        );
    }

    #[test]
    fn a_bad_revision_changes_nothing_and_the_fix_applies_everything_pending() {
        let (store, mut c, mut src) = setup();
        src.commit("v1", &[("a.yaml", &deployment("a", "a:v1"))]);
        src.publish();
        c.sync(&mut src).unwrap();
        let bad = src.commit(
            "bad",
            &[
                ("a.yaml", &deployment("a", "a:v2")),
                (
                    "x.yaml",
                    "kind: Service\napiVersion: v1\nmetadata: {name: X_bad}\n",
                ),
            ],
        );
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.phase, REJECTED);
        assert!(
            out.errors.iter().any(|e| e.starts_with("x.yaml:")),
            "{:?}",
            out.errors
        );
        assert_eq!(image(&store, "a").as_deref(), Some("a:v1"));
        let record = store
            .get(&ObjectKey::new(Kind::Revision, "", &bad))
            .unwrap()
            .unwrap();
        assert_eq!(record["status"]["phase"], REJECTED);

        src.commit("fix", &[("x.yaml", "")]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!((out.phase, out.updated), (APPLIED, 1));
        assert_eq!(
            image(&store, "a").as_deref(),
            Some("a:v2"),
            "the valid change of the rejected revision lands"
        );
    }

    #[test]
    fn commits_arriving_together_are_recorded_and_superseded() {
        let (store, mut c, mut src) = setup();
        // At first start only the head is recorded: history before tend is not imported.
        src.commit("0", &[("a.yaml", &deployment("a", "a:v0"))]);
        src.commit(
            "first seen",
            &[
                ("a.yaml", &deployment("a", "a:v0")),
                ("b.yaml", &deployment("b", "b:v0")),
            ],
        );
        src.publish();
        c.sync(&mut src).unwrap();
        assert_eq!(store.list(Kind::Revision, None).unwrap().0.len(), 1);
        let one = src.commit("1", &[("a.yaml", &deployment("a", "a:v1"))]);
        let two = src.commit("2", &[("a.yaml", &deployment("a", "a:v2"))]);
        let three = src.commit("3", &[("a.yaml", &deployment("a", "a:v3"))]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.superseded, vec![one.clone(), two.clone()]);
        for (id, phase, seq) in [
            (&one, SUPERSEDED, 2),
            (&two, SUPERSEDED, 3),
            (&three, APPLIED, 4),
        ] {
            let r = store
                .get(&ObjectKey::new(Kind::Revision, "", id))
                .unwrap()
                .unwrap();
            assert_eq!(r["status"]["phase"], phase);
            assert_eq!(r["spec"]["sequence"], seq);
        }
        assert_eq!(image(&store, "a").as_deref(), Some("a:v3"));
    }

    /// The cross-file checks follow the files incrementally: a changed file clashing with an
    /// unchanged one is rejected with both places, an unchanged bad file keeps rejecting
    /// later commits, and fixing either side lets the revision through.
    #[test]
    fn clashes_between_a_changed_file_and_unchanged_ones_are_caught() {
        let (store, mut c, mut src) = setup();
        let mut files: Vec<(String, String)> = (0..20)
            .map(|i| {
                (
                    format!("s{i:02}.yaml"),
                    service(&format!("s{i}"), 30100 + i),
                )
            })
            .collect();
        files.push(("a.yaml".into(), deployment("a", "a:v1")));
        let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (&**p, &**t)).collect();
        src.commit("all", &refs);
        src.publish();
        assert_eq!(c.sync(&mut src).unwrap().unwrap().phase, APPLIED);

        // s03 takes s15's NodePort: rejected, naming both files.
        let clash = src.commit("clash", &[("s03.yaml", &service("s3", 30115))]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.phase, REJECTED);
        assert_eq!(
            out.errors,
            vec![
                "s15.yaml:1: spec.ports: nodePort 30115/TCP is given by service/s3 at \
                 s03.yaml:1 and by service/s15 at s15.yaml:1"
                    .to_string()
            ]
        );
        assert_eq!(phase_of(&store, &clash), REJECTED);

        // A duplicate of an unchanged object in a new file, while the clash still stands.
        src.commit("dup", &[("z.yaml", &deployment("a", "a:v9"))]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.phase, REJECTED);
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        assert!(
            out.errors
                .iter()
                .any(|e| e.contains("is defined twice: at a.yaml:1 and at z.yaml:1")),
            "{:?}",
            out.errors
        );

        // An unrelated file with a YAML error; then the two clashes are fixed: the bad file,
        // though unchanged, still rejects the revision.
        src.commit("bad", &[("bad.yaml", "kind: [")]);
        src.commit(
            "fix clashes",
            &[("z.yaml", ""), ("s03.yaml", &service("s3", 30103))],
        );
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.phase, REJECTED);
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(out.errors[0].starts_with("bad.yaml:"), "{:?}", out.errors);

        src.commit("fix the file", &[("bad.yaml", "")]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.phase, APPLIED, "{:?}", out.errors);
        assert_eq!(image(&store, "a").as_deref(), Some("a:v1"));
    }

    #[test]
    fn removed_files_are_pruned_and_their_ports_freed() {
        let (store, mut c, mut src) = setup();
        src.commit(
            "svc",
            &[
                ("s.yaml", &service("s", 30123)),
                ("a.yaml", &deployment("a", "a:v1")),
            ],
        );
        src.publish();
        c.sync(&mut src).unwrap();
        src.commit(
            "move the port",
            &[("s.yaml", ""), ("t.yaml", &service("t", 30123))],
        );
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(
            (out.phase, out.created, out.pruned),
            (APPLIED, 1, 1),
            "{:?}",
            out.errors
        );
        assert!(
            store
                .get(&ObjectKey::new(Kind::Service, "default", "s"))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .get(&ObjectKey::new(Kind::Deployment, "default", "a"))
                .unwrap()
                .is_some()
        );
    }

    /// A store whose commits fail once `allowed` reaches zero (a full disk, or the moment a
    /// process is killed: what was committed before stays, nothing after).
    struct FailingStore {
        inner: Arc<dyn Store>,
        allowed: Mutex<usize>,
    }

    impl Store for FailingStore {
        fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
            self.inner.get(key)
        }
        fn list(
            &self,
            kind: Kind,
            namespace: Option<&str>,
        ) -> Result<(Vec<Value>, u64), StoreError> {
            self.inner.list(kind, namespace)
        }
        fn commit(&self, ops: Vec<Op>) -> Result<crate::store::Committed, StoreError> {
            let mut allowed = self.allowed.lock().unwrap();
            if *allowed == 0 {
                return Err(StoreError::Backend {
                    path: "test".into(),
                    reason: "no space left on device".into(),
                });
            }
            *allowed -= 1;
            self.inner.commit(ops)
        }
        fn watch(&self, from_rv: u64) -> Result<crate::store::Watch, StoreError> {
            self.inner.watch(from_rv)
        }
        fn current_rv(&self) -> u64 {
            self.inner.current_rv()
        }
    }

    fn phase_of(store: &Arc<dyn Store>, id: &str) -> Value {
        store
            .get(&ObjectKey::new(Kind::Revision, "", id))
            .unwrap()
            .map_or(Value::Null, |r| r["status"]["phase"].clone())
    }

    #[test]
    fn a_failed_apply_is_retried_and_a_stranded_pending_revision_is_superseded() {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let failing = Arc::new(FailingStore {
            inner: memory.clone(),
            allowed: Mutex::new(usize::MAX),
        });
        let store: Arc<dyn Store> = failing.clone();
        let mut c =
            SourceController::new(store.clone(), "10.96.0.0/12", Limits::default()).unwrap();
        let mut src = FakeSource::default();
        src.commit("v0", &[("a.yaml", &deployment("a", "a:v0"))]);
        src.publish();
        c.sync(&mut src).unwrap();

        // v1 is recorded, then its apply fails: the next sync applies it all the same.
        let v1 = src.commit("v1", &[("a.yaml", &deployment("a", "a:v1"))]);
        src.publish();
        *failing.allowed.lock().unwrap() = 1;
        assert!(c.sync(&mut src).is_err());
        assert_eq!(phase_of(&store, &v1), PENDING);
        *failing.allowed.lock().unwrap() = usize::MAX;
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!((out.phase, out.updated), (APPLIED, 1));
        assert_eq!(phase_of(&store, &v1), APPLIED);
        assert_eq!(image(&store, "a").as_deref(), Some("a:v1"));

        // v2 is recorded, then serve dies before applying it; after the restart the source
        // is already at v3: v2 is superseded by v3, not left Pending for ever.
        let v2 = src.commit("v2", &[("a.yaml", &deployment("a", "a:v2"))]);
        src.publish();
        *failing.allowed.lock().unwrap() = 1;
        assert!(c.sync(&mut src).is_err());
        drop(c);
        let v3 = src.commit("v3", &[("a.yaml", &deployment("a", "a:v3"))]);
        src.publish();
        let mut c =
            SourceController::new(memory.clone(), "10.96.0.0/12", Limits::default()).unwrap();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.phase, APPLIED);
        assert_eq!(out.superseded, vec![v2.clone()]);
        assert_eq!(phase_of(&memory, &v2), SUPERSEDED);
        let record = memory
            .get(&ObjectKey::new(Kind::Revision, "", &v2))
            .unwrap()
            .unwrap();
        assert_eq!(
            record["status"]["message"],
            format!("superseded by {}", &v3[..7])
        );
        assert_eq!(phase_of(&memory, &v3), APPLIED);
        assert_eq!(image(&memory, "a").as_deref(), Some("a:v3"));
        let sequences: Vec<u64> = memory
            .list(Kind::Revision, None)
            .unwrap()
            .0
            .iter()
            .filter_map(|r| r.pointer("/spec/sequence").and_then(Value::as_u64))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(sequences, vec![1, 2, 3, 4], "no gaps, no repeats");
    }

    #[test]
    fn restart_rebuilds_allocations_and_does_not_rewrite_history() {
        let (store, mut c, mut src) = setup();
        let first = src.commit("svc", &[("s.yaml", &service("s", 30123))]);
        src.publish();
        c.sync(&mut src).unwrap();
        let record_rv = store
            .get(&ObjectKey::new(Kind::Revision, "", &first))
            .unwrap()
            .unwrap()
            .resource_version();
        let mut c =
            SourceController::new(store.clone(), "10.96.0.0/12", Limits::default()).unwrap();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!((out.created, out.updated), (0, 0));
        let record = store
            .get(&ObjectKey::new(Kind::Revision, "", &first))
            .unwrap()
            .unwrap();
        assert_eq!(record.resource_version(), record_rv);
        src.commit("clash", &[("t.yaml", &service("t", 30123))]);
        src.publish();
        let out = c.sync(&mut src).unwrap().unwrap();
        assert_eq!(out.phase, REJECTED);
        assert!(
            out.errors.iter().any(|e| e.contains("30123")),
            "{:?}",
            out.errors
        );
    }
}
