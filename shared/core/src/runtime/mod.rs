//! The runtime every service shares: configuration, the consumer loop, the stage worker, the
//! backends and the wiring that runs a service until it is told to stop.
//!
//! - [`config`] — settings from defaults, a TOML file and `PRISM_…` variables.
//! - [`consumer`] — the one consumer loop: batch, process, publish, acknowledge, dead-letter,
//!   retry.
//! - [`worker`] — the processor that runs a pure [`worker::Stage`] over jobs.
//! - [`batch_jobs`] — what the services look up of a batch job (cancelled? which stages?).
//! - [`backends`] — the ports, connected to real servers or in-process ones.
//! - [`service`] — run a processor on a topic until SIGTERM.
//! - [`telemetry`] — logging, and trace export when configured.
//! - [`trace`] — one upload followed across the services (W3C trace context in Kafka headers).
//! - [`observe`] — Prometheus metrics, liveness and readiness over HTTP.

pub mod backends;
pub mod batch_jobs;
pub mod config;
pub mod consumer;
pub mod observe;
pub mod service;
pub mod telemetry;
pub mod trace;
pub mod worker;
