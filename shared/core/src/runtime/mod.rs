//! The runtime every service shares: configuration, the consumer loop, the stage worker, the
//! backends and the wiring that runs a service until it is told to stop.
//!
//! - [`config`] — settings from defaults, a TOML file and `PRISM_…` variables.
//! - [`consumer`] — the one consumer loop: batch, process, publish, acknowledge, dead-letter,
//!   retry.
//! - [`worker`] — the processor that runs a pure [`worker::Stage`] over jobs.
//! - [`cancelled`] — which batch jobs were cancelled (their queued work is skipped).
//! - [`backends`] — the ports, connected to real servers or in-process ones.
//! - [`service`] — run a processor on a topic until SIGTERM.
//! - [`telemetry`] — logging, and trace export when configured.
//! - [`trace`] — one upload followed across the services (W3C trace context in Kafka headers).
//! - [`observe`] — Prometheus metrics, liveness and readiness over HTTP.

pub mod backends;
pub mod cancelled;
pub mod config;
pub mod consumer;
pub mod observe;
pub mod service;
pub mod telemetry;
pub mod trace;
pub mod worker;
