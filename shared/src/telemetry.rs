//! Logging: human-readable by default, JSON lines with `PRISM_LOG_FORMAT=json`; filter with `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let json = std::env::var("PRISM_LOG_FORMAT").is_ok_and(|format| format == "json");
    // A second init (tests, embedded mode) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
