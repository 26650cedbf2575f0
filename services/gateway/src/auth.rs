//! Who may use what: the admin API always needs the admin token, the upload page and its API
//! only when configured so. The token comes as a bearer token (the admin page sends it) or as
//! basic auth's password (what a browser asks for itself, and sends with every request of the
//! page, the live stream included).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use prism_core::runtime::config::Secret;
use std::sync::Arc;

#[derive(Clone)]
pub struct Guard {
    /// None: nobody gets in (no token configured).
    token: Option<Arc<Secret>>,
    /// What a refusal asks the client for.
    challenge: &'static str,
}

impl Guard {
    pub fn admin(token: Option<Secret>) -> Self {
        Guard {
            token: token.filter(|t| !t.is_empty()).map(Arc::new),
            challenge: "Bearer realm=\"prism-admin\"",
        }
    }

    /// The upload page's guard: basic auth, so the browser asks for the token.
    pub fn uploads(token: Option<Secret>) -> Self {
        Guard {
            challenge: "Basic realm=\"prism\", charset=\"UTF-8\"",
            ..Guard::admin(token)
        }
    }

    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(presented_token)
        else {
            return false;
        };
        constant_time_eq(given.as_bytes(), token.expose().as_bytes())
    }
}

/// The token in an `Authorization` header: `Bearer <token>`, or basic auth's password (the user
/// name is not checked).
fn presented_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

/// Compares without stopping at the first difference, so timing does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Middleware: 401 with a challenge unless the request carries the token.
pub async fn require(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if guard.allows(request.headers()) {
        return next.run(request).await;
    }
    let mut refusal = crate::error::ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this needs the gateway's token (bearer, or the password of basic auth)",
    )
    .into_response();
    refusal.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(guard.challenge),
    );
    refusal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_and_basic_tokens_are_accepted_and_nothing_else() {
        let guard = Guard::admin(Some(Secret::new("s3cret")));
        assert!(guard.allows(&headers("Bearer s3cret")));
        // admin:s3cret
        assert!(guard.allows(&headers("Basic YWRtaW46czNjcmV0")));
        assert!(!guard.allows(&headers("Bearer s3cre")));
        assert!(!guard.allows(&headers("Bearer s3cret2")));
        assert!(!guard.allows(&headers("Basic !!!")));
        assert!(!guard.allows(&HeaderMap::new()));
    }

    #[test]
    fn without_a_token_nobody_gets_in() {
        let guard = Guard::admin(Some(Secret::new("")));
        assert!(!guard.allows(&headers("Bearer ")));
        assert!(!Guard::admin(None).allows(&headers("Basic Og==")));
    }
}
