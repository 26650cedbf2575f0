//! `GET /api/admin/stats`: the statistics this replica gathered, with each worker group's
//! consumer lag and members read from Kafka.

use crate::App;
use crate::stats::Report;
use axum::Json;
use axum::extract::State;
use chrono::Utc;
use prism_core::ports::bus::kafka::{GroupMember, PartitionLag, group_lag};
use prism_core::runtime::config::Lane;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest the admin API waits for Kafka's answers about one group.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Serialize)]
pub struct ConsumerGroup {
    pub group: String,
    pub topic: String,
    pub partitions: Vec<PartitionLag>,
    /// Sum over the partitions.
    pub lag: i64,
    /// None when the broker did not describe the group (`error` says why).
    pub members: Option<Vec<GroupMember>>,
    /// Why the lag or the members could not be read, if they could not.
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct AdminStats {
    #[serde(flatten)]
    pub report: Report,
    /// None in the embedded mode (no Kafka).
    pub consumer_groups: Option<Vec<ConsumerGroup>>,
}

#[utoipa::path(
    get,
    path = "/api/admin/stats",
    security(("admin_token" = [])),
    responses(
        (status = 200, content_type = "application/json", description = "Per-stage counts, shares, dead letters, latency percentiles, per-minute series and consumer groups (see API.md)"),
        (status = 401, body = crate::error::ErrorBody),
    )
)]
pub async fn stats(State(app): State<Arc<App>>) -> Json<AdminStats> {
    let report = app.stats.lock().expect("stats lock").report(Utc::now());
    let consumer_groups = match &app.kafka {
        Some(_) => Some(consumer_groups(&app).await),
        None => None,
    };
    Json(AdminStats {
        report,
        consumer_groups,
    })
}

/// Each worker service's groups on its topics: dedup on uploads, each stage on its jobs, each in
/// both lanes (a batch job's backlog is the `-batch` group's).
async fn consumer_groups(app: &App) -> Vec<ConsumerGroup> {
    let settings = &app.settings;
    let prefix = &settings.kafka.group_prefix;
    let services = std::iter::once(("dedup", settings.topics.uploads.as_str())).chain(
        settings
            .enabled_stages
            .iter()
            .map(|&stage| (stage.as_str(), settings.topics.jobs(stage))),
    );
    let mut groups = Vec::new();
    for (service, topic) in services {
        groups.push((format!("{prefix}-{service}"), topic.to_string()));
        groups.push((
            format!("{prefix}-{service}-batch"),
            Lane::Batch.topic(topic),
        ));
    }
    let mut answers = Vec::new();
    for (group, topic) in groups {
        let kafka = app.kafka.clone().expect("called with Kafka settings");
        let (name, wanted) = (group.clone(), topic.clone());
        let read = tokio::task::spawn_blocking(move || {
            group_lag(&kafka, &name, &[&wanted], KAFKA_TIMEOUT)
        })
        .await;
        let (partitions, members, error) = match read {
            Ok(Ok((partitions, Ok(members)))) => (partitions, Some(members), None),
            Ok(Ok((partitions, Err(why)))) => (partitions, None, Some(why)),
            Ok(Err(error)) => (Vec::new(), None, Some(error.to_string())),
            Err(error) => (Vec::new(), None, Some(error.to_string())),
        };
        answers.push(ConsumerGroup {
            lag: partitions.iter().map(|p| p.lag).sum(),
            group,
            topic,
            partitions,
            members,
            error,
        });
    }
    answers
}
