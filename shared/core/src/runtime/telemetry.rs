//! Logging: human-readable by default, JSON lines with `PRISM_LOG_FORMAT=json`; filter with `RUST_LOG`.
//! Logs go to stderr, so commands whose output is data (`prism reconcile`, `prism run`'s summary)
//! can be piped.

use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let json = std::env::var("PRISM_LOG_FORMAT").is_ok_and(|format| format == "json");
    // A second init (tests, embedded mode) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
