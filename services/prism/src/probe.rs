//! `prism probe URL`: an HTTP health check from the image itself, which has no curl, so that
//! compose's healthchecks can ask a service's `/readyz` or `/healthz`.

use std::error::Error;
use std::time::Duration;

/// A service answers its health endpoints at once; well inside compose's healthcheck timeout.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How much of a failing answer's body the reason quotes (`/readyz` lists the failing checks).
const BODY_QUOTED: usize = 200;

/// GETs `url`: the status on a 2xx answer, else why not, in one line.
pub async fn probe(url: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|error| causes(&error))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|error| causes(&error))?;
    let status = response.status();
    if status.is_success() {
        return Ok(status.to_string());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(BODY_QUOTED)
        .collect();
    Err(format!("{status}: {body}"))
}

/// The error and its causes on one line (reqwest's own message hides the cause, e.g. the refusal).
fn causes(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_core::runtime::observe;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn passes_on_2xx_and_fails_with_the_reason_otherwise() {
        let shutdown = CancellationToken::new();
        // A service's real endpoints: alive, not ready until its consumer group check passes.
        let address = observe::serve("127.0.0.1:0", &[observe::CONSUMER_GROUP], &shutdown)
            .await
            .unwrap();

        assert_eq!(
            probe(&format!("http://{address}/healthz")).await,
            Ok("200 OK".into())
        );
        assert_eq!(
            probe(&format!("http://{address}/readyz")).await,
            Err("503 Service Unavailable: not ready consumer group: not yet".into())
        );
        shutdown.cancel();

        // Nothing listens on a port just freed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = probe(&format!("http://{closed}/readyz")).await.unwrap_err();
        assert!(refused.contains("Connection refused"), "{refused}");
    }

    #[tokio::test]
    async fn gives_up_on_a_server_that_never_answers() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap();
        // Accepts the connection and keeps it open without a word.
        let _connection =
            tokio::spawn(async move { silent.accept().await.map(|(socket, _)| socket) });
        let started = std::time::Instant::now();
        let silence = probe(&format!("http://{address}/readyz"))
            .await
            .unwrap_err();
        assert!(silence.contains("timed out"), "{silence}");
        assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
    }
}
