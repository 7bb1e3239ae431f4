//! The embedded store: one redb file under the state directory.
