//! Logging: human-readable by default, JSON lines with `PRISM_LOG_FORMAT=json`; filter with `RUST_LOG`.
//! Logs go to stderr, so commands whose output is data (`prism reconcile`, `prism run`'s summary)
//! can be piped. Colours only on a terminal, and never with `NO_COLOR` set (no-color.org): a log
//! file or a pipe gets plain text.

use std::io::IsTerminal;
use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colours_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    let json = std::env::var("PRISM_LOG_FORMAT").is_ok_and(|format| format == "json");
    // A second init (tests, embedded mode) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Colour for a terminal, unless `NO_COLOR` is set to anything but the empty string.
fn colours_wanted(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some("".into())));
        assert!(!colours_wanted(true, Some("1".into())));
        assert!(!colours_wanted(false, None));
    }
}
