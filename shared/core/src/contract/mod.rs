//! The contract: every message Prism reads or writes, and what decides a stage's output.
//!
//! - [`messages`] — jobs, results and dead letters, as consumers see them.
//! - [`ingest`] — MinIO's bucket notification format, which starts everything.
//! - [`reannounce`] — the announcements Prism makes itself (watcher, reconcile), and their marks.
//! - [`stages`] — each stage's parameters and the fingerprint that names its output.
//! - [`schemas`] — the JSON Schemas of all of the above, and a validator.

pub mod ingest;
pub mod messages;
pub mod reannounce;
pub mod schemas;
pub mod stages;

pub use messages::*;
