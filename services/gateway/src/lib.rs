//! The gateway: Prism's HTTP face (`prism serve gateway`; `prism run --web` in the embedded mode).
//!
//! Stateless, so replicas scale like the workers: an upload is streamed to the input bucket and
//! announced on the uploads topic like any other; every replica follows every partition of the
//! result and dead-letter topics from their end (assigned, in no consumer group), so it hears
//! every outcome its own clients wait for; and results from before it started are read back from
//! the dedup index's claims. It never decodes an image.
//!
//! - [`uploads`] — the page's uploads and its live stream (Server-Sent Events).
//! - [`results`] — an upload's results, a content's results, the objects.
//! - [`predict`] — `POST /predict`.
//! - [`admin`], [`stats`] — the admin page's numbers.
//! - [`jobs`] — batch jobs: submit, list, status, cancel.
//! - [`hub`] — the outcomes heard, handed to whoever waits.
//! - [`lookup`] — results read back from the claims.

pub mod admin;
mod assets;
pub mod auth;
mod error;
pub mod hub;
pub mod jobs;
mod lookup;
mod openapi;
pub mod predict;
pub mod results;
pub mod stats;
pub mod uploads;
mod views;

use auth::Guard;
use axum::Router;
use axum::routing::{get, post};
use hub::Hub;
use prism_core::ports::batch::JobBook;
use prism_core::ports::bus::Subscriber;
use prism_core::ports::bus::kafka::KafkaSubscriber;
use prism_core::runtime::backends::Backends;
use prism_core::runtime::config::{KafkaSettings, Settings, resolve_secret};
use prism_core::runtime::service;
use stats::Stats;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// What every request handler shares.
pub struct App {
    pub settings: Settings,
    pub backends: Backends,
    pub hub: Hub,
    pub stats: Arc<Mutex<Stats>>,
    lookup: lookup::Lookup,
    pub max_upload_bytes: u64,
    /// Where to read consumer lag from; None in the embedded mode.
    pub kafka: Option<KafkaSettings>,
    /// Where batch jobs are kept; None where no job manager can run, so `/api/jobs` refuses
    /// rather than take jobs nobody would run.
    pub jobs: Option<Arc<dyn JobBook>>,
    /// Ends the live streams, so a graceful shutdown does not wait on open pages.
    pub shutdown: CancellationToken,
}

impl App {
    pub fn new(
        settings: Settings,
        backends: Backends,
        kafka: Option<KafkaSettings>,
        shutdown: CancellationToken,
    ) -> Self {
        let lookup =
            lookup::Lookup::new(&settings, backends.buckets.clone(), backends.index.clone());
        // The job manager (`prism serve jobs`) runs beside the servers; the embedded mode (no
        // Kafka) has none, and its book is the process's memory.
        let jobs = kafka.is_some().then(|| backends.book.clone());
        App {
            max_upload_bytes: settings
                .gateway
                .max_upload_bytes
                .unwrap_or(settings.stages.limits.max_bytes),
            hub: Hub::default(),
            stats: Arc::new(Mutex::new(Stats::new(chrono::Utc::now()))),
            lookup,
            backends,
            settings,
            kafka,
            jobs,
            shutdown,
        }
    }

    /// The topics the gateway listens to: every enabled stage's results and the dead letters.
    pub fn outcome_topics(&self) -> Vec<&str> {
        let topics = &self.settings.topics;
        let mut wanted: Vec<&str> = self
            .settings
            .enabled_stages
            .iter()
            .map(|&stage| topics.results(stage))
            .collect();
        wanted.push(&topics.deadletter);
        wanted
    }
}

/// Every route, with its guard and time limits.
pub fn router(app: Arc<App>) -> anyhow::Result<Router> {
    let gateway = &app.settings.gateway;
    let token = resolve_secret(&gateway.admin_token, gateway.admin_token_file.as_deref())
        .map_err(|error| anyhow::anyhow!("cannot read gateway.admin_token_file: {error}"))?;
    if token.is_empty() {
        tracing::warn!("no gateway.admin_token configured: the admin API refuses everyone");
    }
    let admin_guard = Guard::admin(Some(token.clone()));
    let quick = TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        gateway.request_timeout,
    );
    let admin = Router::new()
        .route("/api/admin/stats", get(admin::stats))
        .route("/api/jobs", get(jobs::list).post(jobs::submit))
        .route("/api/jobs/{id}", get(jobs::status))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .layer(quick)
        .route_layer(axum::middleware::from_fn_with_state(
            admin_guard,
            auth::require,
        ));
    let reads = Router::new()
        .route("/", get(assets::upload_page))
        .route("/api/uploads/{bucket}/{*key}", get(results::upload))
        .route("/api/results/{content_hash}", get(results::content))
        .route("/api/objects/{bucket}/{*key}", get(results::object))
        .layer(quick);
    let uploads = Router::new()
        .route("/api/uploads", post(uploads::upload))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            gateway.upload_timeout,
        ));
    // /predict bounds its own wait; the live stream lasts as long as the page.
    let waits = Router::new()
        .route("/predict", post(predict::predict))
        .route("/api/sessions/{session}/events", get(uploads::events));
    let mut public = reads.merge(uploads).merge(waits);
    if gateway.protect_uploads {
        public = public.route_layer(axum::middleware::from_fn_with_state(
            Guard::uploads(Some(token)),
            auth::require,
        ));
    }
    let open = Router::new()
        .route("/admin", get(assets::admin_page))
        .route("/assets/{*name}", get(assets::asset))
        .route("/api/openapi.json", get(openapi::document))
        .route("/healthz", get(|| async { "ok" }))
        .layer(quick);
    Ok(public
        .merge(admin)
        .merge(open)
        // A client that stops sending its body mid-way is cut off, whatever the route.
        .layer(RequestBodyTimeoutLayer::new(gateway.body_idle_timeout))
        .with_state(app))
}

/// Serves `app` on `listener`, hearing outcomes from `subscriber`, until `shutdown`.
pub async fn run(
    app: Arc<App>,
    subscriber: Box<dyn Subscriber>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = router(app.clone())?;
    let topics = app.settings.topics.clone();
    let listening = tokio::spawn(app.hub.clone().listen(
        subscriber,
        topics,
        app.stats.clone(),
        shutdown.clone(),
    ));
    tracing::info!(address = %listener.local_addr()?, "gateway listening");
    let stop = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    shutdown.cancel();
    listening.await??;
    Ok(())
}

/// Runs the gateway against Kafka, S3 and CouchDB until `shutdown`.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    // The buckets are the deployment's (compose's minio-init) or the stages' to create: the
    // gateway's S3 user may not create buckets.
    let backends = service::observe_and_connect(&settings, &[], &shutdown).await?;
    let listen = settings.gateway.listen.clone();
    let kafka = settings.kafka.clone();
    let app = Arc::new(App::new(
        settings,
        backends,
        Some(kafka.clone()),
        shutdown.clone(),
    ));
    // Following the topics from their end before listening: no outcome a client waits for
    // can be published before the gateway hears.
    let topics: Vec<String> = app.outcome_topics().iter().map(|t| t.to_string()).collect();
    let subscriber = tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        KafkaSubscriber::tail(&kafka, "gateway", &topics)
    })
    .await??;
    let listener = TcpListener::bind(&listen).await?;
    run(app, Box::new(subscriber), listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use prism_core::contract::StageName;
    use prism_core::ports::batch::memory::MemoryJobBook;
    use prism_core::ports::batch::{ItemOutcome, JobBook, JobItem, JobState};
    use prism_core::ports::bus::memory::MemoryBus;
    use prism_core::ports::claims::memory::MemoryIndex;
    use prism_core::ports::store::Buckets;
    use serde_json::json;
    use tower::ServiceExt;

    /// The gateway over in-process ports, with `gateway` settings.
    fn app(configure: impl FnOnce(&mut Settings)) -> Router {
        router(Arc::new(gateway(configure))).unwrap()
    }

    fn gateway(configure: impl FnOnce(&mut Settings)) -> App {
        let mut settings = Settings::default();
        settings.gateway.admin_token = prism_core::runtime::config::Secret::new("s3cret");
        configure(&mut settings);
        let backends = Backends {
            publisher: Arc::new(MemoryBus::default()),
            buckets: Buckets::memory(),
            index: Arc::new(MemoryIndex::default()),
            book: Arc::new(MemoryJobBook::default()),
        };
        App::new(settings, backends, None, CancellationToken::new())
    }

    /// The gateway as beside the servers: batch jobs in `book`.
    fn with_jobs(book: Arc<MemoryJobBook>, configure: impl FnOnce(&mut Settings)) -> Router {
        let mut gateway = gateway(configure);
        gateway.jobs = Some(book);
        router(Arc::new(gateway)).unwrap()
    }

    /// `method path` with the admin token (or none) and a JSON body; the status and JSON answer.
    async fn call(
        router: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => Body::from(json.to_string()),
            None => Body::empty(),
        };
        let response = router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn status(
        router: &Router,
        path: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, Option<String>) {
        let mut request = Request::get(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|value| value.to_str().unwrap().to_string());
        (response.status(), challenge)
    }

    #[tokio::test]
    async fn the_admin_api_needs_the_token_and_the_pages_do_not() {
        let router = app(|_| {});
        let (refused, challenge) = status(&router, "/api/admin/stats", None).await;
        assert_eq!(refused, StatusCode::UNAUTHORIZED);
        assert!(challenge.unwrap().starts_with("Bearer"));
        let (allowed, _) = status(&router, "/api/admin/stats", Some("Bearer s3cret")).await;
        assert_eq!(allowed, StatusCode::OK);
        for page in ["/", "/admin", "/api/openapi.json", "/healthz"] {
            assert_eq!(
                status(&router, page, None).await.0,
                StatusCode::OK,
                "{page}"
            );
        }
    }

    #[tokio::test]
    async fn protected_uploads_ask_the_browser_for_the_token() {
        let router = app(|settings| settings.gateway.protect_uploads = true);
        for path in ["/", "/api/sessions/s1/events", "/api/results/00"] {
            let (refused, challenge) = status(&router, path, None).await;
            assert_eq!(refused, StatusCode::UNAUTHORIZED, "{path}");
            assert!(challenge.unwrap().starts_with("Basic"), "{path}");
        }
        // any user name, the token as password: "page:s3cret"
        let (allowed, _) = status(&router, "/", Some("Basic cGFnZTpzM2NyZXQ=")).await;
        assert_eq!(allowed, StatusCode::OK);
        // The admin page's HTML stays public: it asks for the token itself.
        assert_eq!(status(&router, "/admin", None).await.0, StatusCode::OK);
    }

    /// One object's outcome in `stage` of `job`, as a stage records it.
    fn outcome(job: &str, key: &str, stage: StageName, outcome: ItemOutcome) -> JobItem {
        JobItem {
            processing_ms: 40,
            latency_ms: 90,
            ..JobItem::new(job, key, stage, outcome, chrono::Utc::now())
        }
    }

    #[tokio::test]
    async fn a_job_is_submitted_listed_followed_and_cancelled() {
        let book = Arc::new(MemoryJobBook::default());
        let router = with_jobs(book.clone(), |_| {});
        let token = Some("s3cret");
        let submission = json!({"prefix": "batch/", "stages": ["classify", "detect"], "deadline_s": 900, "name": "nightly"});
        let (created, job) = call(&router, "POST", "/api/jobs", token, Some(submission)).await;
        assert_eq!(created, StatusCode::CREATED, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        assert_eq!(job["bucket"], "prism-input", "the input bucket by default");
        assert_eq!(job["stages"], json!(["detect", "classify"]));
        assert_eq!(job["state"], "listing");
        assert_eq!(
            (job["name"].clone(), job["deadline_s"].clone()),
            (json!("nightly"), json!(900))
        );

        // One object through both stages, another through one so far.
        book.record_items(&[
            outcome(&id, "batch/a.jpg", StageName::Detect, ItemOutcome::Done),
            outcome(
                &id,
                "batch/a.jpg",
                StageName::Classify,
                ItemOutcome::Deduplicated,
            ),
            outcome(&id, "batch/b.jpg", StageName::Detect, ItemOutcome::Failed),
        ])
        .await
        .unwrap();
        let (listed, list) = call(&router, "GET", "/api/jobs", token, None).await;
        assert_eq!(listed, StatusCode::OK);
        let jobs = list["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0]["job"]["id"], id.as_str());
        assert_eq!(jobs[0]["finished"], 1);
        assert_eq!(
            jobs[0]["outcomes"],
            json!({"done": 1, "deduplicated": 1, "failed": 1})
        );

        let (found, status) = call(&router, "GET", &format!("/api/jobs/{id}"), token, None).await;
        assert_eq!(found, StatusCode::OK);
        assert_eq!(status["job"]["state"], "listing");
        assert_eq!(status["tally"]["counts"]["detect"]["failed"]["items"], 1);
        assert!(status["rate_per_s"].as_f64().unwrap() >= 0.0);
        assert_eq!(status["eta_s"], json!(null), "not listed to the end yet");

        let cancel = format!("/api/jobs/{id}/cancel");
        let (cancelled, job) = call(&router, "POST", &cancel, token, None).await;
        assert_eq!(cancelled, StatusCode::OK);
        assert_eq!(job["cancel_requested"], true);
        // Asked again before the manager acted: the same answer.
        assert_eq!(
            call(&router, "POST", &cancel, token, None).await.0,
            StatusCode::OK
        );

        // Once the job has ended, there is nothing to cancel.
        let mut stored = book.job(&id).await.unwrap().unwrap();
        stored.state = JobState::Cancelled;
        assert!(book.replace_job(&mut stored).await.unwrap());
        let (ended, refusal) = call(&router, "POST", &cancel, token, None).await;
        assert_eq!(ended, StatusCode::CONFLICT);
        assert_eq!(refusal["code"], "job_ended");

        let (missing, refusal) = call(
            &router,
            "GET",
            "/api/jobs/20260101-000000-000000",
            token,
            None,
        )
        .await;
        assert_eq!(missing, StatusCode::NOT_FOUND);
        assert_eq!(refusal["code"], "no_such_job");
    }

    #[tokio::test]
    async fn a_job_the_pipeline_cannot_run_is_refused_with_the_reason() {
        let router = with_jobs(Arc::new(MemoryJobBook::default()), |settings| {
            settings.enabled_stages = vec![StageName::Thumbnail, StageName::Detect];
        });
        let token = Some("s3cret");
        for (submission, code, reason) in [
            (
                json!({"bucket": "elsewhere", "prefix": "", "stages": ["detect"]}),
                "foreign_bucket",
                "is not the input bucket \"prism-input\"",
            ),
            (
                json!({"prefix": "a/", "stages": []}),
                "no_stages",
                "no stages",
            ),
            (
                json!({"prefix": "a/", "stages": ["classify"]}),
                "stage_disabled",
                "stage classify is not enabled",
            ),
            (
                json!({"prefix": "a/", "stages": ["sharpen"]}),
                "bad_json",
                "unknown variant `sharpen`",
            ),
            (
                json!({"prefix": "a/"}),
                "bad_json",
                "missing field `stages`",
            ),
        ] {
            let (status, refusal) =
                call(&router, "POST", "/api/jobs", token, Some(submission)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{refusal}");
            assert_eq!(refusal["code"], code);
            let said = refusal["reason"].as_str().unwrap();
            assert!(said.contains(reason), "{code}: {said}");
        }
        let (listed, list) = call(&router, "GET", "/api/jobs", token, None).await;
        assert_eq!((listed, list), (StatusCode::OK, json!({"jobs": []})));
    }

    #[tokio::test]
    async fn batch_jobs_need_the_token() {
        let router = with_jobs(Arc::new(MemoryJobBook::default()), |_| {});
        let submission = json!({"prefix": "", "stages": ["detect"]});
        for (method, path, body) in [
            ("POST", "/api/jobs", Some(submission)),
            ("GET", "/api/jobs", None),
            ("GET", "/api/jobs/x", None),
            ("POST", "/api/jobs/x/cancel", None),
        ] {
            let (refused, _) = call(&router, method, path, None, body.clone()).await;
            assert_eq!(refused, StatusCode::UNAUTHORIZED, "{method} {path}");
            let (refused, _) = call(&router, method, path, Some("guess"), body).await;
            assert_eq!(refused, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn the_embedded_mode_says_batch_jobs_need_the_job_manager() {
        let router = app(|_| {});
        let submission = json!({"prefix": "", "stages": ["detect"]});
        let (away, refusal) = call(
            &router,
            "POST",
            "/api/jobs",
            Some("s3cret"),
            Some(submission),
        )
        .await;
        assert_eq!(away, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refusal["code"], "no_job_manager");
        assert!(
            refusal["reason"]
                .as_str()
                .unwrap()
                .contains("prism serve jobs")
        );
        let (away, _) = call(&router, "GET", "/api/jobs", Some("s3cret"), None).await;
        assert_eq!(away, StatusCode::SERVICE_UNAVAILABLE);
    }
}
