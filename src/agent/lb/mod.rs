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
//! - [`bench`]: `tend bench services`.
//! - [`LbSync`] (here): remembers what it programmed, sends only the difference, and goes
//!   back to a full sync at start, after a failed transaction, and when drift is found.

pub mod bench;
pub mod diff;
pub mod model;
pub mod netlink;
pub mod nft;
#[cfg(test)]
mod tests;
pub mod text;

use diff::Op;
use model::Desired;
use nft::{NftApply, NftError};

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

/// The load balancer's state: what it programmed last (`None`: unknown, so the next sync
/// is full) and the marker of the last full sync, which drift checks compare.
pub struct LbSync<A: NftApply> {
    nft: A,
    applied: Option<Desired>,
    /// Tells this process's full syncs from another's (an agent restarted over the table).
    instance: String,
    generation: u64,
}

impl<A: NftApply> LbSync<A> {
    /// `instance` goes into the marker: different per agent process (pid and start time).
    pub fn new(nft: A, instance: impl Into<String>) -> Self {
        LbSync {
            nft,
            applied: None,
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
            Some(applied) => (SyncKind::Incremental, diff::diff(applied, &desired)),
            None => {
                self.generation += 1;
                (SyncKind::Full, diff::full(&desired, &self.marker()))
            }
        };
        if ops.is_empty() {
            return Ok(SyncReport {
                kind: SyncKind::Nothing,
                ops: 0,
            });
        }
        match self.nft.apply(&ops) {
            Ok(()) => {
                self.applied = Some(desired);
                Ok(SyncReport {
                    kind,
                    ops: ops.len(),
                })
            }
            Err(e) => {
                self.applied = None;
                Err(e)
            }
        }
    }

    /// Whether the table drifted from what this process programmed (deleted, flushed, or
    /// rebuilt by someone else): the marker of the last full sync must still be there. On
    /// drift the record is dropped, so the next [`LbSync::sync`] is full. Cheap: the
    /// backend reads one one-rule chain, whatever the table's size.
    pub fn check(&mut self) -> Result<bool, NftError> {
        if self.applied.is_none() {
            return Ok(false);
        }
        let observed = self.nft.observe()?;
        if observed.as_deref() == Some(self.marker().as_str()) {
            return Ok(false);
        }
        self.applied = None;
        Ok(true)
    }

    /// What was programmed last, if known.
    pub fn applied(&self) -> Option<&Desired> {
        self.applied.as_ref()
    }

    pub fn nft(&self) -> &A {
        &self.nft
    }

    pub fn nft_mut(&mut self) -> &mut A {
        &mut self.nft
    }
}
