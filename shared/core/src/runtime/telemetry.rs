//! Logging: human-readable by default, JSON lines with `PRISM_LOG_FORMAT=json`; filter with `RUST_LOG`.
//! Logs go to stderr, so commands whose output is data (`prism reconcile`, `prism run`'s summary)
//! can be piped. Colours only on a terminal, and never with `NO_COLOR` set (no-color.org): a log
//! file or a pipe gets plain text. Traces go out over OTLP when the environment names an endpoint
//! (see [`super::trace`]).

use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_subscriber::{EnvFilter, fmt};

/// Keep it for the life of the process: dropping it sends the spans not yet exported.
#[must_use = "dropping it at once would end trace export"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take()
            && let Err(error) = traces.shutdown()
        {
            tracing::warn!(%error, "could not send the last spans");
        }
    }
}

/// Logging, and trace export as `OTEL_SERVICE_NAME` (default: the program and its subcommand,
/// e.g. `prism-dedup` for `prism serve dedup`) when an OTLP endpoint is set.
pub fn init() -> Telemetry {
    init_logs();
    let args: Vec<String> = std::env::args().collect();
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| service_name(&args));
    let traces = super::trace::export_from_environment(&service).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot export traces; going on without");
        None
    });
    Telemetry { traces }
}

/// `prism serve dedup` is `prism-dedup`, `prism watch` is `prism-watch`, `prism-dedup` itself.
fn service_name(args: &[String]) -> String {
    let program = args
        .first()
        .and_then(|path| std::path::Path::new(path).file_name())
        .map_or("prism".into(), |name| name.to_string_lossy().into_owned());
    let words: Vec<&str> = args
        .iter()
        .skip(1)
        .take_while(|arg| !arg.starts_with('-'))
        .map(String::as_str)
        .collect();
    match words.as_slice() {
        ["serve", service, ..] => format!("{program}-{service}"),
        [command, ..] => format!("{program}-{command}"),
        [] => program,
    }
}

fn init_logs() {
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
    fn the_service_is_named_by_the_program_and_its_subcommand() {
        let name =
            |args: &[&str]| service_name(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(
            name(&["/usr/local/bin/prism", "serve", "dedup"]),
            "prism-dedup"
        );
        assert_eq!(
            name(&["prism", "watch", "--interval-ms", "200"]),
            "prism-watch"
        );
        assert_eq!(name(&["prism", "run", "in", "out"]), "prism-run");
        assert_eq!(name(&["./prism-thumbnail"]), "prism-thumbnail");
        assert_eq!(name(&["prism-detect", "--help"]), "prism-detect");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some("".into())));
        assert!(!colours_wanted(true, Some("1".into())));
        assert!(!colours_wanted(false, None));
    }
}
