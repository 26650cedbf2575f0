//! `/api/jobs`: batch jobs over the admin API (submit, list, status, cancel), the same requests
//! as `prism job …` (`prism_jobs::requests`) on the same job book. The job manager (`prism serve
//! jobs`) does the work; the embedded mode has none, so there these routes answer 503.

use crate::App;
use crate::error::{ApiError, ErrorBody};
use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use futures::{StreamExt, TryStreamExt};
use prism_core::ports::batch::{BatchJob, ItemOutcome, JobBook};
use prism_jobs::requests::{self, JobStatus, RequestError, Submission};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest submission read; a real one is a few hundred bytes.
const MAX_SUBMISSION_BYTES: usize = 64 * 1024;
/// Newest jobs listed when the request does not say.
const DEFAULT_LIST_LIMIT: usize = 50;
/// Most jobs listed at once: each costs a count of its outcomes in the book.
const MAX_LIST_LIMIT: usize = 500;
/// Jobs counted at once while listing.
const CONCURRENT_COUNTS: usize = 8;

/// A job as the API shows it: `JobStatus` (`job`, `tally`, `finished`) with its figures summed up.
#[derive(Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub status: JobStatus,
    /// Stage outcomes over all the job's stages.
    pub outcomes: Outcomes,
    /// Objects finished per second: since submission while the job runs, over its wall time
    /// once it ended.
    pub rate_per_s: f64,
    /// Seconds left at that rate, once the listing is done and while the job runs.
    pub eta_s: Option<u64>,
}

/// `GET /api/jobs`'s answer.
#[derive(Serialize)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobView>,
}

#[derive(Serialize)]
pub struct Outcomes {
    pub done: u64,
    pub deduplicated: u64,
    pub failed: u64,
}

impl JobView {
    fn of(status: JobStatus) -> Self {
        let job = &status.job;
        let rate_per_s = status.rate();
        let eta_s = match job.state.is_final() {
            true => None,
            false => status.eta().map(|eta| eta.as_secs()),
        };
        JobView {
            outcomes: Outcomes {
                done: status.outcomes(ItemOutcome::Done),
                deduplicated: status.outcomes(ItemOutcome::Deduplicated),
                failed: status.outcomes(ItemOutcome::Failed),
            },
            rate_per_s,
            eta_s,
            status,
        }
    }
}

impl App {
    /// The job book, where a job manager can run.
    fn job_book(&self) -> Result<&dyn JobBook, ApiError> {
        self.jobs.as_deref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_job_manager",
                "batch jobs need the servers and `prism serve jobs`; the embedded mode (`prism run --web`) has no job manager",
            )
        })
    }
}

/// A refused request is the client's (400, 404, 409, with the reason); the book away is ours (503).
impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        let (status, code) = match error {
            RequestError::Index(index) => return ApiError::from(index),
            RequestError::ForeignBucket { .. } => (StatusCode::BAD_REQUEST, "foreign_bucket"),
            RequestError::BadPrefix(_) => (StatusCode::BAD_REQUEST, "bad_prefix"),
            RequestError::NoStages => (StatusCode::BAD_REQUEST, "no_stages"),
            RequestError::StageDisabled { .. } => (StatusCode::BAD_REQUEST, "stage_disabled"),
            RequestError::NoSuchJob(_) => (StatusCode::NOT_FOUND, "no_such_job"),
            RequestError::Ended { .. } => (StatusCode::CONFLICT, "job_ended"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// `POST /api/jobs`
#[utoipa::path(
    post,
    path = "/api/jobs",
    security(("admin_token" = [])),
    request_body(
        content = Object,
        content_type = "application/json",
        description = "`{\"prefix\", \"stages\": [\"thumbnail\"|\"detect\"|\"classify\"], \"bucket\"?, \"deadline_s\"?, \"name\"?}`; bucket defaults to the input bucket, the only one allowed",
        example = json!({"prefix": "photos/2026/", "stages": ["classify", "detect"], "deadline_s": 900, "name": "november"}),
    ),
    responses(
        (status = 201, content_type = "application/json", description = "The job stored (`id`, `state`: `listing`, …); the manager starts it within its poll interval"),
        (status = 400, body = ErrorBody, description = "`bad_json`, `foreign_bucket`, `no_stages`, `stage_disabled`"),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "The job book is away, or `no_job_manager` (the embedded mode)"),
    )
)]
pub async fn submit(
    State(app): State<Arc<App>>,
    body: Body,
) -> Result<(StatusCode, Json<BatchJob>), ApiError> {
    let book = app.job_book()?;
    let bytes = to_bytes(body, MAX_SUBMISSION_BYTES)
        .await
        .map_err(|error| {
            ApiError::bad_request("bad_json", format!("cannot read the request: {error}"))
        })?;
    let submission: Submission = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request(
            "bad_json",
            format!("expected {{\"prefix\": \"...\", \"stages\": [\"classify\", ...]}}: {error}"),
        )
    })?;
    let job = requests::submit(book, &app.settings, submission).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /api/jobs`
#[utoipa::path(
    get,
    path = "/api/jobs",
    security(("admin_token" = [])),
    params(("limit" = Option<usize>, Query, description = "Newest jobs to list: 50 unless given, at most 500")),
    responses(
        (status = 200, content_type = "application/json", description = "`{\"jobs\": [JobView]}`, newest first; JobView as `GET /api/jobs/{id}`"),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn list(
    State(app): State<Arc<App>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let book = app.job_book()?;
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .min(MAX_LIST_LIMIT);
    let newest = requests::list(book).await?.into_iter().take(limit);
    let jobs = futures::stream::iter(newest)
        .map(|job| async move {
            let tally = book.tally(&job.id).await?;
            let finished = tally.objects_finished(&job.stages);
            Ok::<_, ApiError>(JobView::of(JobStatus {
                job,
                tally,
                finished,
            }))
        })
        .buffered(CONCURRENT_COUNTS)
        .try_collect()
        .await?;
    Ok(Json(JobList { jobs }))
}

/// `GET /api/jobs/{id}`
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    security(("admin_token" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, content_type = "application/json", description = "JobView: `job`, `tally` (per stage and outcome), `finished` (objects every stage has an outcome for), `outcomes` {done, deduplicated, failed} over all stages, `rate_per_s`, `eta_s`"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "`no_such_job`"),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let status = requests::status(app.job_book()?, &id).await?;
    Ok(Json(JobView::of(status)))
}

/// `POST /api/jobs/{id}/cancel`
#[utoipa::path(
    post,
    path = "/api/jobs/{id}/cancel",
    security(("admin_token" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, content_type = "application/json", description = "The job, `cancel_requested`: true; the manager stops it (state `cancelled`) on its next round"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "`no_such_job`"),
        (status = 409, body = ErrorBody, description = "`job_ended`: it completed or was cancelled"),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<BatchJob>, ApiError> {
    Ok(Json(requests::cancel(app.job_book()?, &id).await?))
}
