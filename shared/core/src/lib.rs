//! Prism's common library: the message contract, configuration, the ports with their adapters
//! (bus, object store, claim index), and the one consumer loop every service runs.

pub mod bus;
pub mod claims;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod imaging;
pub mod ingest;
pub mod reconcile;
pub mod schemas;
pub mod service;
pub mod stages;
pub mod store;
pub mod telemetry;
pub mod watch;
pub mod worker;
