//! The ports: small traits for the outside world, each with its adapters.
//!
//! - [`bus`] — publish and subscribe (Kafka; in-memory).
//! - [`store`] — buckets of objects (S3/MinIO; folders; in-memory).
//! - [`claims`] — the claim index dedup and the stages share (CouchDB; in-memory).
//! - [`batch`] — batch jobs and their outcomes (CouchDB; in-memory).

pub mod batch;
pub mod bus;
pub mod claims;
pub mod store;
