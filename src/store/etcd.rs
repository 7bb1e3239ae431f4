//! The store on etcd v3, for several control planes sharing one state (`--store etcd://...`).
//!
//! Objects live under `/tend/` at their storage key (`/tend/Deployment/default/web`), as the
//! same compact JSON the embedded store keeps, so `list` is sorted by key as there.
//!
//! - **resourceVersion is etcd's revision**, as in Kubernetes: an object's resourceVersion is
//!   its key's `mod_revision`, written over the stored body on every read (the body's own
//!   value is only the guess made before the write), and every object of one transaction gets
//!   the revision of its etcd transaction.
//! - **A transaction** reads the keys it touches, runs the op semantics every backend shares
//!   (`memory::apply_transaction`), and writes the outcome as one etcd transaction guarded by
//!   the mod revisions it read (0 for an absent key). When another writer got there first the
//!   guard fails and the transaction is read and applied again; a caller's `expect_rv` that no
//!   longer matches is then a `Conflict`, as on the other backends. A revision apply of the
//!   source controller is one transaction whatever its size, so etcd must accept large ones
//!   (`--max-txn-ops`, `--max-request-bytes`; see docs/etcd.md).
//! - **Watches** are served from a local `WatchLog` fed by one etcd watch on the prefix, so
//!   they also see what other control planes write. The feed starts at the revision the store
//!   was opened at and resumes from the last revision it saw after a disconnect; when etcd has
//!   compacted that history away, the log forgets what it kept and every watcher gets `Gone`
//!   and lists again, as Kubernetes' watch cache does. `commit` returns once its own events
//!   are in the log (bounded wait), so a watch started after a commit sees what follows it.
//! - **Sync over async**: the `Store` trait is synchronous and its callers run on tokio
//!   workers and blocking threads alike, so the store owns a small runtime of its own and
//!   waits for it on a std channel (never `block_on` inside someone else's runtime). Every
//!   request has a deadline: with etcd down a call fails within seconds with one line naming
//!   the endpoints, and works again once etcd is back.

use super::memory::{Staging, apply_transaction, decode, encode, key_range, op_key};
use super::watch::{EncodedEvent, WatchEventType, WatchLimits, WatchLog};
use super::{Committed, Op, Store, StoreError, Watch};
use crate::api::{Kind, ObjectKey};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, Txn, TxnOp,
    TxnOpResponse, WatchClient, WatchOptions,
};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The key prefix of every object tend keeps in etcd.
pub const PREFIX: &str = "/tend/";

/// How long one request may take before the call fails (etcd down, or no leader).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// More time for a large transaction: a second per MiB sent.
const TIMEOUT_PER_MIB: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `commit` waits for its own events to come back through the watch feed.
const FEED_WAIT: Duration = Duration::from_secs(5);
/// Transactions re-applied after a failed guard before giving up.
const MAX_ATTEMPTS: usize = 32;
/// Reads per etcd read transaction (etcd's default `--max-txn-ops` is 128).
const READS_PER_TXN: usize = 64;
/// From this many keys under one parent, a transaction reads the whole parent in one range.
const RANGE_READ_FROM: usize = 4;
/// Responses may be large (a list of thousands of objects); tonic's default is 4 MiB.
const MAX_MESSAGE: usize = 1 << 30;

/// The parsed `--store etcd://HOST:PORT[,HOST:PORT...]`: the gRPC endpoints.
pub fn parse_url(url: &str) -> Result<Vec<String>, String> {
    let usage = "expected etcd://HOST:PORT[,HOST:PORT...]";
    let Some(list) = url.strip_prefix("etcd://") else {
        return Err(format!("{url:?}: {usage}"));
    };
    let mut endpoints = Vec::new();
    for part in list.split(',') {
        let bad = |why: &str| format!("{url:?}: {why} in {part:?}; {usage}");
        let (host, port) = part.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
        let host_ok = !host.is_empty()
            && (bracketed
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
        if !host_ok {
            return Err(bad("bad host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.chars().all(|c| c.is_ascii_digit()) => {}
            _ => return Err(bad("bad port")),
        }
        endpoints.push(format!("http://{host}:{port}"));
    }
    Ok(endpoints)
}

pub struct EtcdStore {
    /// `etcd://HOST:PORT,...`, for error messages.
    name: String,
    prefix: String,
    kv: KvClient,
    /// Where the store's requests run; `_runtime` keeps it alive.
    runtime: tokio::runtime::Handle,
    _runtime: OwnRuntime,
    log: WatchLog,
    feed: Arc<Feed>,
    feeder: tokio::task::JoinHandle<()>,
}

/// How far the watch feed has brought the log: the newest revision seen.
struct Feed {
    rv: Mutex<u64>,
    advanced: Condvar,
}

impl Feed {
    fn get(&self) -> u64 {
        *self.rv.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, rv: u64) {
        let mut seen = self.rv.lock().unwrap_or_else(|e| e.into_inner());
        *seen = (*seen).max(rv);
        self.advanced.notify_all();
    }

    /// Waits until the feed has reached `rv`, at most `FEED_WAIT`.
    fn wait_for(&self, rv: u64) {
        let seen = self.rv.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .advanced
            .wait_timeout_while(seen, FEED_WAIT, |seen| *seen < rv);
    }
}

impl EtcdStore {
    /// Connects to `url` (`etcd://HOST:PORT[,...]`) with objects under `/tend/`.
    pub fn open(url: &str) -> Result<EtcdStore, StoreError> {
        Self::open_with(url, PREFIX, WatchLimits::default())
    }

    /// Like `open`, with objects under `prefix` (several stores on one etcd, for tests) and a
    /// watch log keeping the most recent events within `limits`.
    pub fn open_with(
        url: &str,
        prefix: &str,
        limits: WatchLimits,
    ) -> Result<EtcdStore, StoreError> {
        let name = url.to_string();
        let fail = |reason: String| StoreError::Backend {
            path: name.clone(),
            reason,
        };
        let endpoints = parse_url(url).map_err(fail)?;
        let own = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tend-etcd")
            .enable_all()
            .build()
            .map(|r| OwnRuntime(Some(r)))
            .map_err(|e| fail(format!("starting its runtime: {e}")))?;
        let handle = match &own.0 {
            Some(runtime) => runtime.handle().clone(),
            None => return Err(fail("its runtime did not start".into())),
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let client = run_on(&handle, REQUEST_TIMEOUT, async move {
            Client::connect(endpoints, Some(options)).await
        })
        .map_err(fail)?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        // The revision the log starts at; the feed watches from the one after.
        let mut probe = kv.clone();
        let key = prefix.to_string();
        let start = run_on(&handle, REQUEST_TIMEOUT, async move {
            let options = GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_limit(1);
            probe.get(key, Some(options)).await
        })
        .map_err(fail)?;
        let start = revision(start.header());
        let log = WatchLog::new(start, limits);
        let feed = Arc::new(Feed {
            rv: Mutex::new(start),
            advanced: Condvar::new(),
        });
        let feeder = handle.spawn(feed_log(Feeder {
            name: name.clone(),
            prefix: prefix.to_string(),
            kv: kv.clone(),
            watch,
            log: log.clone(),
            feed: Arc::clone(&feed),
            next: start + 1,
        }));
        Ok(EtcdStore {
            name,
            prefix: prefix.to_string(),
            kv,
            runtime: handle,
            _runtime: own,
            log,
            feed,
            feeder,
        })
    }

    fn fail(&self, reason: String) -> StoreError {
        StoreError::Backend {
            path: self.name.clone(),
            reason,
        }
    }

    /// Runs `future` on the store's runtime and waits for it, at most `timeout`.
    fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        future: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, String> {
        run_on(&self.runtime, timeout, future)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

/// The store's own runtime, shut down without waiting when dropped: the store may be dropped
/// (or fail to open) on another runtime's worker, where a plain `Runtime` drop panics.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` from any thread (a tokio worker included) and waits for it on a
/// std channel; the deadline is enforced inside the runtime.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    timeout: Duration,
    future: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let outcome = match tokio::time::timeout(timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(explain(&describe(&e))),
            Err(_) => Err(format!(
                "no answer within {}s (is etcd running and does it have a leader?)",
                timeout.as_secs()
            )),
        };
        let _ = tx.send(outcome);
    });
    rx.recv()
        .unwrap_or_else(|_| Err("the store's runtime stopped".into()))
}

/// One line for a client error: etcd's own message, or the root cause of a transport failure
/// ("tcp connect error: Connection refused"), without tonic's debug dump.
fn describe(error: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return error.to_string();
    };
    let mut line = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    let mut root = None;
    while let Some(e) = cause {
        root = Some(e.to_string());
        cause = e.source();
    }
    if let Some(root) = root.filter(|r| !line.contains(r.as_str())) {
        line = format!("{line}: {root}");
    }
    if line.is_empty() {
        line = format!("{:?}", status.code());
    }
    line
}

/// etcd's error, with what to do about the limits a large transaction meets.
fn explain(error: &str) -> String {
    let hint = if error.contains("too many operations in txn request") {
        " (tend commits a revision apply as one transaction: start etcd with a larger \
         --max-txn-ops, see docs/etcd.md)"
    } else if error.contains("request is too large") || error.contains("message length too large") {
        " (tend commits a revision apply as one transaction: start etcd with a larger \
         --max-request-bytes, see docs/etcd.md)"
    } else {
        ""
    };
    format!("{error}{hint}")
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision().max(0) as u64)
}

/// A stored object with its resourceVersion set from etcd's `mod_revision`.
fn decode_at(key: &str, bytes: &[u8], rv: i64) -> Result<Value, StoreError> {
    let mut object = decode(key, bytes)?;
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    Ok(object)
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// What one etcd read found: storage key -> (stored bytes, mod_revision).
type Fetched = HashMap<String, (Vec<u8>, i64)>;

/// The transaction's objects: its own writes over what was read from etcd.
struct EtcdStaging<'a> {
    fetched: &'a Fetched,
    /// Written keys in the order first written (the order of the etcd ops, hence of events).
    order: Vec<String>,
    written: HashMap<String, Option<Arc<[u8]>>>,
}

impl Staging for EtcdStaging<'_> {
    fn read(&mut self, key: &str) -> Result<Option<Value>, StoreError> {
        if let Some(written) = self.written.get(key) {
            return written.as_ref().map(|b| decode(key, b)).transpose();
        }
        self.fetched
            .get(key)
            .map(|(bytes, rv)| decode_at(key, bytes, *rv))
            .transpose()
    }

    fn write(&mut self, key: &str, encoded: Option<Arc<[u8]>>) -> Result<(), StoreError> {
        if self.written.insert(key.to_string(), encoded).is_none() {
            self.order.push(key.to_string());
        }
        Ok(())
    }
}

/// The parent of a storage key (`Deployment/default/` of `Deployment/default/web`).
fn parent(key: &str) -> &str {
    key.rfind('/').map_or("", |at| &key[..=at])
}

/// Reads `keys` (storage keys) from etcd: point reads, or one range read for a parent with
/// many of them. Returns what exists and the newest revision read at.
async fn read_keys(
    mut kv: KvClient,
    prefix: String,
    keys: Vec<String>,
) -> Result<(Fetched, u64), etcd_client::Error> {
    let mut per_parent: HashMap<&str, Vec<&String>> = HashMap::new();
    for key in &keys {
        per_parent.entry(parent(key)).or_default().push(key);
    }
    let mut reads = Vec::new();
    for (parent, keys) in per_parent {
        if keys.len() >= RANGE_READ_FROM && !parent.is_empty() {
            let options = GetOptions::new().with_prefix();
            reads.push(TxnOp::get(format!("{prefix}{parent}"), Some(options)));
        } else {
            reads.extend(
                keys.into_iter()
                    .map(|k| TxnOp::get(format!("{prefix}{k}"), None)),
            );
        }
    }
    let mut fetched = Fetched::new();
    let mut read_rv = 0;
    let mut found = |kvs: &[etcd_client::KeyValue]| {
        for item in kvs {
            if let Some(key) = item.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) {
                fetched.insert(
                    key.to_string(),
                    (item.value().to_vec(), item.mod_revision()),
                );
            }
        }
    };
    for chunk in reads.chunks(READS_PER_TXN) {
        let response = kv.txn(Txn::new().and_then(chunk.to_vec())).await?;
        read_rv = read_rv.max(revision(response.header()));
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                found(get.kvs());
            }
        }
    }
    Ok((fetched, read_rv))
}

/// One attempt's outcome.
enum Attempt {
    Done(Committed, bool),
    /// Another writer changed a key since it was read.
    Raced,
}

impl Store for EtcdStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let storage_key = key.storage_key();
        let mut kv = self.kv.clone();
        let full = format!("{}{storage_key}", self.prefix);
        let mut response = self
            .run(REQUEST_TIMEOUT, async move { kv.get(full, None).await })
            .map_err(|e| self.fail(format!("reading {storage_key}: {e}")))?;
        response
            .take_kvs()
            .first()
            .map(|item| decode_at(&storage_key, item.value(), item.mod_revision()))
            .transpose()
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        super::list_by_visit(self, kind, namespace)
    }

    /// One range read: its raw values are held at once, each is parsed in turn.
    fn visit(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        each: &mut dyn FnMut(Value),
    ) -> Result<u64, StoreError> {
        let (start, end) = key_range(kind, namespace);
        let mut kv = self.kv.clone();
        let prefix = self.prefix.clone();
        let (from, to) = (format!("{prefix}{start}"), format!("{prefix}{end}"));
        let mut response = self
            .run(REQUEST_TIMEOUT, async move {
                kv.get(from, Some(GetOptions::new().with_range(to))).await
            })
            .map_err(|e| self.fail(format!("listing {start}: {e}")))?;
        let rv = revision(response.header());
        for item in response.take_kvs() {
            let key = item.key_str().unwrap_or_default();
            let key = key.strip_prefix(&self.prefix).unwrap_or(key);
            each(decode_at(key, item.value(), item.mod_revision())?);
        }
        Ok(rv)
    }

    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        if ops.is_empty() {
            return Ok(Committed {
                resource_version: self.current_rv(),
                objects: Vec::new(),
            });
        }
        // Keys that do not parse are left to `apply_transaction`, which refuses them in order.
        let mut keys: Vec<String> = ops
            .iter()
            .filter_map(|op| op_key(op).ok())
            .map(|k| k.storage_key())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for _ in 0..MAX_ATTEMPTS {
            let (fetched, read_rv) = {
                let (kv, prefix, keys) = (self.kv.clone(), self.prefix.clone(), keys.clone());
                self.run(REQUEST_TIMEOUT, read_keys(kv, prefix, keys))
                    .map_err(|e| self.fail(format!("reading for a transaction: {e}")))?
            };
            match self.attempt(ops.clone(), &fetched, read_rv)? {
                Attempt::Done(committed, has_events) => {
                    if has_events {
                        self.feed.wait_for(committed.resource_version);
                    }
                    return Ok(committed);
                }
                Attempt::Raced => continue,
            }
        }
        Err(self.fail(format!(
            "a transaction of {} keys lost {MAX_ATTEMPTS} races with other writers in a row",
            keys.len()
        )))
    }

    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError> {
        // A resourceVersion ahead of the feed is either a write the feed has not brought yet
        // (another control plane's) or one from a history this etcd no longer has (restored
        // from a backup: revisions went back). Watching the latter would skip every change
        // until the revisions catch up, so the watcher is told to list again instead, as
        // Kubernetes answers "too large resource version".
        if from_rv > self.feed.get() {
            let now = self.etcd_revision()?;
            if from_rv > now {
                return Err(StoreError::Gone {
                    requested: from_rv,
                    oldest: now,
                });
            }
        }
        self.log.subscribe(from_rv)
    }

    fn current_rv(&self) -> u64 {
        self.feed.get()
    }
}

impl EtcdStore {
    /// etcd's current revision.
    fn etcd_revision(&self) -> Result<u64, StoreError> {
        let mut kv = self.kv.clone();
        let key = self.prefix.clone();
        let response = self
            .run(REQUEST_TIMEOUT, async move {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1);
                kv.get(key, Some(options)).await
            })
            .map_err(|e| self.fail(format!("reading the revision: {e}")))?;
        Ok(revision(response.header()))
    }

    /// Applies `ops` over what was read at `read_rv` and writes the outcome guarded by it.
    fn attempt(
        &self,
        ops: Vec<Op>,
        fetched: &Fetched,
        read_rv: u64,
    ) -> Result<Attempt, StoreError> {
        let mut staging = EtcdStaging {
            fetched,
            order: Vec::new(),
            written: HashMap::new(),
        };
        // The revision is etcd's to give; `read_rv + 1` is only a guess, fixed below.
        let (mut committed, events) = apply_transaction(ops, read_rv + 1, &mut staging)?;
        let mut guards = Vec::with_capacity(staging.order.len());
        let mut writes = Vec::with_capacity(staging.order.len());
        let mut bytes = 0;
        for key in &staging.order {
            let full = format!("{}{key}", self.prefix);
            let read = fetched.get(key).map_or(0, |(_, rv)| *rv);
            guards.push(Compare::mod_revision(full.clone(), CompareOp::Equal, read));
            match staging.written.get(key) {
                Some(Some(encoded)) => {
                    bytes += encoded.len();
                    writes.push(TxnOp::put(full, encoded.to_vec(), None));
                }
                // Deleting a key that was not there (created and deleted here) writes nothing.
                Some(None) if read == 0 => {}
                Some(None) | None => writes.push(TxnOp::delete(full, None)),
            }
        }
        tracing::debug!(
            objects = staging.order.len(),
            bytes,
            read_rv,
            "etcd transaction"
        );
        let mut kv = self.kv.clone();
        let txn = Txn::new().when(guards).and_then(writes);
        let timeout = REQUEST_TIMEOUT + TIMEOUT_PER_MIB * (bytes >> 20) as u32;
        let response = self
            .run(timeout, async move { kv.txn(txn).await })
            .map_err(|e| self.fail(format!("committing {} objects: {e}", staging.order.len())))?;
        if !response.succeeded() {
            return Ok(Attempt::Raced);
        }
        let rv = revision(response.header());
        committed.resource_version = rv;
        for object in &mut committed.objects {
            set_rv(object, rv);
        }
        Ok(Attempt::Done(committed, !events.is_empty()))
    }
}

/// The watch feed's state, owned by its task.
struct Feeder {
    name: String,
    prefix: String,
    kv: KvClient,
    watch: WatchClient,
    log: WatchLog,
    feed: Arc<Feed>,
    /// The first revision not yet in the log.
    next: u64,
}

/// Feeds the log from an etcd watch on the prefix, forever: reconnects after errors from the
/// next revision, and after a compaction starts over (every watcher gets `Gone`).
async fn feed_log(mut feeder: Feeder) {
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    let mut pause = FIRST_PAUSE;
    loop {
        match feeder.follow(&mut pause).await {
            Ok(()) => pause = FIRST_PAUSE,
            Err(e) => {
                tracing::warn!(store = %feeder.name, "watching etcd: {e}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl Feeder {
    /// Follows one etcd watch until it ends: `Ok` when it should be resumed at once. Once etcd
    /// has answered, the next reconnection starts again from the shortest `pause`.
    async fn follow(&mut self, pause: &mut Duration) -> Result<(), String> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.next as i64)
            .with_prev_key();
        let mut stream = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.watch.watch(self.prefix.clone(), Some(options)),
        )
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => {
                    *pause = Duration::from_millis(100);
                    response
                }
                Ok(None) => return Err("the watch stream ended".into()),
                Err(e) => return Err(e.to_string()),
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    return self.start_over(response.compact_revision()).await;
                }
                return Err(format!("watch canceled: {}", response.cancel_reason()));
            }
            let mut events = Vec::with_capacity(response.events().len());
            let mut newest = 0;
            for event in response.events() {
                match self.encode(event) {
                    Ok(Some(encoded)) => {
                        newest = newest.max(encoded.resource_version);
                        events.push(encoded);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(store = %self.name, "skipping a watch event: {e}"),
                }
            }
            if newest > 0 {
                self.log.append(events);
                self.next = newest + 1;
                self.feed.advance(newest);
            }
        }
    }

    /// After etcd compacted the history the feed needed: the log forgets, and the feed goes on
    /// from now.
    async fn start_over(&mut self, compacted: i64) -> Result<(), String> {
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_limit(1);
        let now = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.kv.get(self.prefix.clone(), Some(options)),
        )
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
        let now = revision(now.header());
        tracing::warn!(
            store = %self.name,
            "etcd compacted its history up to revision {compacted} while tend's watch was away: \
             watchers list again from revision {now}"
        );
        self.log.lose_history(now);
        self.next = now + 1;
        self.feed.advance(now);
        Ok(())
    }

    /// One etcd event as the log keeps it; `None` for keys outside the prefix's objects.
    fn encode(&self, event: &etcd_client::Event) -> Result<Option<EncodedEvent>, String> {
        let Some(kv) = event.kv() else {
            return Ok(None);
        };
        let full = kv.key_str().map_err(|e| e.to_string())?;
        let Some(key) = full.strip_prefix(&self.prefix) else {
            return Ok(None);
        };
        let kind = key
            .split('/')
            .next()
            .and_then(Kind::from_name)
            .ok_or_else(|| format!("{key} is not the key of an object of a known kind"))?;
        let rv = kv.mod_revision();
        let (event_type, body) = match event.event_type() {
            EventType::Put if kv.create_revision() == kv.mod_revision() => {
                (WatchEventType::Added, kv.value())
            }
            EventType::Put => (WatchEventType::Modified, kv.value()),
            EventType::Delete => match event.prev_kv() {
                Some(prev) => (WatchEventType::Deleted, prev.value()),
                None => return Err(format!("deletion of {key} without its last state")),
            },
        };
        let object = decode_at(key, body, rv).map_err(|e| e.to_string())?;
        Ok(Some(EncodedEvent {
            event_type,
            kind,
            resource_version: rv.max(0) as u64,
            object: encode(&object),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_lists_strictly() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379").expect("one"),
            ["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse_url("etcd://a.example:1,b-2:2,[::1]:3").expect("three"),
            ["http://a.example:1", "http://b-2:2", "http://[::1]:3"]
        );
        for bad in [
            "127.0.0.1:2379",
            "http://127.0.0.1:2379",
            "etcd://",
            "etcd://host",
            "etcd://host:",
            "etcd://host:0",
            "etcd://host:99999",
            "etcd://host:+1",
            "etcd://a:1,",
            "etcd://a:1,,b:2",
            "etcd://:1",
            "etcd://ho st:1",
            "etcd://host:1/path",
            "etcd://user@host:1",
        ] {
            let error = parse_url(bad).expect_err(bad);
            assert!(error.contains("etcd://HOST:PORT"), "{bad}: {error}");
        }
    }

    #[test]
    fn parents_group_keys_by_namespace() {
        assert_eq!(parent("Deployment/default/web"), "Deployment/default/");
        assert_eq!(parent("Node/n1"), "Node/");
        assert_eq!(parent("x"), "");
    }

    #[test]
    fn reads_overwrite_the_stored_resource_version() {
        let stored = br#"{"kind":"Pod","metadata":{"name":"p","resourceVersion":"3"}}"#;
        let object = decode_at("Pod/default/p", stored, 42).expect("decode");
        assert_eq!(object["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn limit_errors_say_which_etcd_flag_to_raise() {
        let ops = explain(
            "grpc request error: status: InvalidArgument, message: \"etcdserver: too many operations in txn request\"",
        );
        assert!(ops.contains("--max-txn-ops"), "{ops}");
        let bytes = explain("etcdserver: request is too large");
        assert!(bytes.contains("--max-request-bytes"), "{bytes}");
        assert_eq!(explain("other"), "other");
    }
}
