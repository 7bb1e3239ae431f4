//! The command-line client: one file per verb, kubectl-style tables, and the `serve` daemon's
//! flags. Every error becomes one line on stderr; exit codes are 0 (yes), 1 (no), 2 (error).

pub mod columns;
pub mod humanize;
pub mod output;
pub mod serve;
pub mod table;
