//! Service load balancing in nftables, as kube-proxy's nftables mode does it, updated with
//! transactions whose size follows the change, not the cluster.
//!
//! - [`model`]: Services + ready endpoints + node -> the desired content of the one table
//!   tend owns (`ip tend-lb`) (pure).
//! - [`diff`]: applied -> desired as a list of nft operations; or a full rebuild (pure).
//! - [`nft`]: the operations as nft JSON (the `nftables` crate's schema), loaded in one
//!   transaction by `nft -j -f -`; the drift marker read back; a recording fake.
//! - [`netlink`]: the same operations sent to the kernel as one nf_tables netlink batch,
//!   without the `nft` program (whose cache makes every call cost the whole ruleset); the
//!   marker read back with a dump of its one chain. What the agent uses.
//! - [`text`]: the operations in nft's own syntax, for `nft -f` (what nft's JSON cannot say).
//! - [`table`]: the desired table kept per Service, so that a change is computed and
//!   diffed at its own cost, not the table's (pure).
//! - [`bench`]: `tend bench services`.
//! - [`LbSync`] (here): remembers what it programmed, sends only the difference, and goes
//!   back to a full sync at start, after a failed transaction, and when drift is found.

pub mod bench;
pub mod diff;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod table;
#[cfg(test)]
mod tests;
pub mod text;

use diff::Op;
use model::Desired;
use nft::{NftApply, NftError};
use table::Delta;

/// The one nftables table the load balancer owns (family `ip`). Nothing else is touched.
pub const TABLE: &str = "tend-lb";

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// The table already matched.
    Nothing,
    /// Only the difference was sent.
    Incremental,
    /// The table was rebuilt in one transaction.
    Full,
}

/// What a sync did, and how big its transaction was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub kind: SyncKind,
    pub ops: usize,
}

/// What the load balancer knows of the kernel's table.
enum Applied {
    /// Nothing (start, a failed transaction, drift): the next sync is full.
    Unknown,
    /// This whole table, programmed by [`LbSync::sync`].
    Whole(Desired),
    /// The table of the caller's [`table::Table`] as of the last [`LbSync::sync_delta`]:
    /// the caller keeps the record, so it is not held twice.
    Tracked,
}

/// The load balancer's state: what it programmed last and the marker of the last full
/// sync, which drift checks compare.
pub struct LbSync<A: NftApply> {
    nft: A,
    applied: Applied,
    /// Tells this process's full syncs from another's (an agent restarted over the table).
    instance: String,
    generation: u64,
}

impl<A: NftApply> LbSync<A> {
    /// `instance` goes into the marker: different per agent process (pid and start time).
    pub fn new(nft: A, instance: impl Into<String>) -> Self {
        LbSync {
            nft,
            applied: Applied::Unknown,
            instance: instance.into(),
            generation: 0,
        }
    }

    fn marker(&self) -> String {
        format!("tend-lb {} {}", self.instance, self.generation)
    }

    /// Programs `desired`: the difference from what was programmed last, or the whole
    /// table when that is unknown. A failed transaction leaves the kernel's table as it was
    /// (transactions are atomic) but the next sync is full, to be safe.
    pub fn sync(&mut self, desired: Desired) -> Result<SyncReport, NftError> {
        let (kind, ops): (SyncKind, Vec<Op>) = match &self.applied {
            Applied::Whole(applied) => (SyncKind::Incremental, diff::diff(applied, &desired)),
            Applied::Unknown | Applied::Tracked => {
                self.generation += 1;
                (SyncKind::Full, diff::full(&desired, &self.marker()))
            }
        };
        let report = self.send(kind, &ops)?;
        self.applied = Applied::Whole(desired);
        Ok(report)
    }

    /// Programs the change `delta` of the caller's [`table::Table`] (what the agent does on
    /// every Service or Endpoints change): the difference of its two halves, whose cost is
    /// the change's, not the table's; or, when the kernel's table is unknown, the whole
    /// table, which `whole` composes.
    pub fn sync_delta(
        &mut self,
        delta: &Delta,
        whole: impl FnOnce() -> Desired,
    ) -> Result<SyncReport, NftError> {
        let (kind, ops): (SyncKind, Vec<Op>) = match &self.applied {
            Applied::Tracked => (
                SyncKind::Incremental,
                diff::diff(&delta.before, &delta.after),
            ),
            Applied::Unknown | Applied::Whole(_) => {
                self.generation += 1;
                (SyncKind::Full, diff::full(&whole(), &self.marker()))
            }
        };
        let report = self.send(kind, &ops)?;
        self.applied = Applied::Tracked;
        Ok(report)
    }

    /// Sends `ops` as one transaction; on failure the table is unknown (the kernel kept the
    /// old one, but the record moved on), so the next sync is full.
    fn send(&mut self, kind: SyncKind, ops: &[Op]) -> Result<SyncReport, NftError> {
        if ops.is_empty() {
            return Ok(SyncReport {
                kind: SyncKind::Nothing,
                ops: 0,
            });
        }
        match self.nft.apply(ops) {
            Ok(()) => Ok(SyncReport {
                kind,
                ops: ops.len(),
            }),
            Err(e) => {
                self.applied = Applied::Unknown;
                Err(e)
            }
        }
    }

    /// Whether the table drifted from what this process programmed (deleted, flushed, or
    /// rebuilt by someone else): the marker of the last full sync must still be there. On
    /// drift the record is dropped, so the next [`LbSync::sync`] is full. Cheap: the
    /// backend reads one one-rule chain, whatever the table's size.
    pub fn check(&mut self) -> Result<bool, NftError> {
        if matches!(self.applied, Applied::Unknown) {
            return Ok(false);
        }
        let observed = self.nft.observe()?;
        if observed.as_deref() == Some(self.marker().as_str()) {
            return Ok(false);
        }
        self.applied = Applied::Unknown;
        Ok(true)
    }

    /// Whether the kernel's table is known (else the next sync is full).
    pub fn programmed(&self) -> bool {
        !matches!(self.applied, Applied::Unknown)
    }

    pub fn nft(&self) -> &A {
        &self.nft
    }

    pub fn nft_mut(&mut self) -> &mut A {
        &mut self.nft
    }
}
