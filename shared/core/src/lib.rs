//! Prism's core library. Every service is the same consumer loop around a processor; this crate
//! holds everything they share, in three layers:
//!
//! - [`contract`] — the messages (upload events in MinIO's format, jobs, results, dead letters),
//!   their JSON Schemas, and the stage parameters whose fingerprint names each stage's output.
//!   Plain data: no I/O.
//! - [`ports`] — the outside world behind small traits (message bus, object store, claim index),
//!   each with a real adapter (Kafka, S3, CouchDB) and an in-process one (embedded mode, tests).
//! - [`runtime`] — configuration, the consumer loop, the stage worker, and the wiring that connects
//!   the ports and runs a service until SIGTERM.
//!
//! The stages' pure work (decoding, resizing, detection) lives in their own crates and knows
//! nothing of this one but the [`runtime::worker::Stage`] trait they implement.

pub mod contract;
pub mod ports;
pub mod runtime;
