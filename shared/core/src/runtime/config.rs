//! Configuration: built-in defaults, then an optional TOML file named by `PRISM_CONFIG`, then
//! environment variables `PRISM_…` with `__` between levels (`PRISM_KAFKA__BROKERS`).
//!
//! Secrets (the CouchDB password; S3 keys come from the standard `AWS_*` variables) can also be read
//! from a file (`PRISM_COUCHDB__PASSWORD_FILE`, for Docker and Kubernetes secrets) and never appear in
//! `Debug` output or logs.

use crate::contract::stages::StageParams;
use crate::contract::{SourceObject, StageName};
use figment::{
    Figment, Provider,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::{fmt, path::PathBuf, time::Duration};

/// Loads a service's configuration; `T` names its sections and gives their defaults.
pub fn load<T: Serialize + DeserializeOwned + Default>() -> Result<T, Box<figment::Error>> {
    load_with(Figment::new())
}

/// [`load`], then `overrides` on top (tests name their own topics and buckets this way).
pub fn load_with<T: Serialize + DeserializeOwned + Default>(
    overrides: impl Provider,
) -> Result<T, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Ok(path) = std::env::var("PRISM_CONFIG") {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("PRISM_").split("__"))
        .merge(overrides)
        .extract()
        .map_err(Box::new)
}

/// A value that is never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    /// Consumer groups are `<group_prefix>-<service>`: replicas of one service share the work, and
    /// two Prism deployments on one cluster stay apart with different prefixes.
    pub group_prefix: String,
    /// Partitions for topics Prism creates at start-up; bounds how many replicas of a stage can work.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long a silent consumer keeps its partitions; lower means faster takeover after a crash.
    pub session_timeout_ms: u32,
    /// How long a replica may go without taking a message before it is presumed stuck and its
    /// partitions move. The consumer loop retries a transient failure (a server outage) for as
    /// long as it lasts, not taking messages meanwhile, so this bounds the outage a replica rides
    /// out in its group; past it the replica leaves, another redelivers its unacknowledged
    /// messages, and it rejoins when it takes messages again (nothing is lost either way).
    pub max_poll_interval_ms: u32,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.mechanisms`), applied last.
    pub properties: std::collections::BTreeMap<String, String>,
    /// SASL password, kept out of `properties` so it is never printed.
    pub sasl_password: Secret,
    pub sasl_password_file: Option<PathBuf>,
}

/// librdkafka's 45 s default leaves a dead replica's partitions idle too long for an image pipeline.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;

/// librdkafka's 5-minute default would eject every replica during a CouchDB or S3 outage of a few
/// minutes, only for the same outage to stall their successors: half an hour rides out ordinary
/// restarts and maintenance.
pub const DEFAULT_MAX_POLL_INTERVAL_MS: u32 = 30 * 60 * 1000;

/// Enough partitions that a dozen replicas of a stage can each own some.
pub const DEFAULT_PARTITIONS: i32 = 12;

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            group_prefix: "prism".into(),
            partitions: DEFAULT_PARTITIONS,
            replication_factor: 1,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            max_poll_interval_ms: DEFAULT_MAX_POLL_INTERVAL_MS,
            properties: Default::default(),
            sasl_password: Secret::default(),
            sasl_password_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// Empty means AWS itself; MinIO or another S3 server otherwise.
    pub endpoint: String,
    pub region: String,
    /// MinIO and most self-hosted servers want path-style URLs.
    pub path_style: bool,
    /// Static credentials; when empty, the standard `AWS_*` variables or the instance role.
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub secret_access_key_file: Option<PathBuf>,
}

impl S3Settings {
    /// The configured key pair, if one is configured (the secret possibly read from its file).
    pub fn static_credentials(&self) -> std::io::Result<Option<(String, Secret)>> {
        if self.access_key_id.is_empty() {
            return Ok(None);
        }
        let secret = resolve_secret(
            &self.secret_access_key,
            self.secret_access_key_file.as_deref(),
        )?;
        Ok(Some((self.access_key_id.clone(), secret)))
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            secret_access_key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CouchSettings {
    pub url: String,
    pub database: String,
    pub username: String,
    pub password: Secret,
    pub password_file: Option<PathBuf>,
}

impl Default for CouchSettings {
    fn default() -> Self {
        CouchSettings {
            url: "http://127.0.0.1:5984".into(),
            database: "prism".into(),
            username: "admin".into(),
            password: Secret::default(),
            password_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub uploads: String,
    pub thumbnail_jobs: String,
    pub detect_jobs: String,
    pub classify_jobs: String,
    pub thumbnail_results: String,
    pub detect_results: String,
    pub classify_results: String,
    pub deadletter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            uploads: "prism.uploads".into(),
            thumbnail_jobs: "prism.jobs.thumbnail".into(),
            detect_jobs: "prism.jobs.detect".into(),
            classify_jobs: "prism.jobs.classify".into(),
            thumbnail_results: "prism.results.thumbnail".into(),
            detect_results: "prism.results.detect".into(),
            classify_results: "prism.results.classify".into(),
            deadletter: "prism.deadletter".into(),
        }
    }
}

impl Topics {
    pub fn jobs(&self, stage: StageName) -> &str {
        match stage {
            StageName::Thumbnail => &self.thumbnail_jobs,
            StageName::Detect => &self.detect_jobs,
            StageName::Classify => &self.classify_jobs,
        }
    }

    pub fn results(&self, stage: StageName) -> &str {
        match stage {
            StageName::Thumbnail => &self.thumbnail_results,
            StageName::Detect => &self.detect_results,
            StageName::Classify => &self.classify_results,
        }
    }

    /// The stage's jobs topic in `lane`.
    pub fn jobs_in(&self, stage: StageName, lane: Lane) -> String {
        lane.topic(self.jobs(stage))
    }

    /// The topic the work for `source` goes to: its stage's jobs topic in the source's lane.
    pub fn jobs_for(&self, stage: StageName, source: &SourceObject) -> String {
        self.jobs_in(stage, Lane::of(source))
    }

    /// Every topic Prism uses, both lanes of the work topics included.
    pub fn all(&self) -> Vec<String> {
        let work = std::iter::once(self.uploads.as_str())
            .chain(StageName::ALL.map(|stage| self.jobs(stage)))
            .flat_map(|topic| Lane::ALL.map(|lane| lane.topic(topic)));
        let rest = StageName::ALL
            .map(|stage| self.results(stage))
            .into_iter()
            .chain([self.deadletter.as_str()])
            .map(str::to_string);
        work.chain(rest).collect()
    }
}

/// Which topics work travels on. A batch job's objects have work topics of their own (the
/// interactive topic's name plus `.batch`), so a worker can take uploads first however long the
/// job's queue is. Results and dead letters share one topic per kind: consumers see both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Interactive,
    Batch,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Batch];

    pub fn of(source: &SourceObject) -> Lane {
        match source.batch_job {
            Some(_) => Lane::Batch,
            None => Lane::Interactive,
        }
    }

    /// `topic` (an interactive work topic's name) in this lane.
    pub fn topic(self, topic: &str) -> String {
        match self {
            Lane::Interactive => topic.to_string(),
            Lane::Batch => format!("{topic}.batch"),
        }
    }
}

/// How the shared consumer loop retries what failed for now (the same for every service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerSettings {
    /// First and longest pause between retries of a transient failure.
    #[serde(with = "millis")]
    pub retry_initial: Duration,
    #[serde(with = "millis")]
    pub retry_max: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// How one service takes work from its topic: batches of up to `max_batch` messages (waiting at
/// most `max_delay` for one to fill once its first message is in), `concurrency` batches at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intake {
    pub max_batch: usize,
    #[serde(with = "millis")]
    pub max_delay: Duration,
    /// Batches in flight at once; unset means one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

impl Intake {
    /// Batches in flight at once (at least one).
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cores| cores.get()))
            .max(1)
    }

    /// Dedup waits on its servers, not on CPU: many events in flight, claimed in bulk. Batches
    /// stay small enough that the stages get their first jobs early (a batch is published when
    /// all of it is hashed and claimed).
    fn dedup() -> Self {
        Intake {
            max_batch: 16,
            max_delay: Duration::ZERO,
            concurrency: Some(4),
        }
    }

    /// Results are counted in bulk: one write to the index per batch.
    fn counting() -> Self {
        Intake {
            max_batch: 200,
            max_delay: Duration::from_millis(20),
            concurrency: Some(1),
        }
    }

    /// One image per job, one job per core.
    fn thumbnail() -> Self {
        Intake {
            max_batch: 1,
            max_delay: Duration::ZERO,
            concurrency: None,
        }
    }

    /// Jobs gathered into one forward pass (which uses every core); a second batch is read and
    /// decoded while the first is inferred. Detect and classify alike.
    fn model() -> Self {
        Intake {
            max_batch: 8,
            max_delay: Duration::from_millis(10),
            concurrency: Some(2),
        }
    }
}

/// Each service's [`Intake`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intakes {
    pub dedup: Intake,
    pub thumbnail: Intake,
    pub detect: Intake,
    pub classify: Intake,
    /// The job manager's counting of results and dead letters.
    pub jobs: Intake,
}

impl Default for Intakes {
    fn default() -> Self {
        Intakes {
            dedup: Intake::dedup(),
            thumbnail: Intake::thumbnail(),
            detect: Intake::model(),
            classify: Intake::model(),
            jobs: Intake::counting(),
        }
    }
}

impl Intakes {
    pub fn stage(&self, stage: StageName) -> &Intake {
        match stage {
            StageName::Thumbnail => &self.thumbnail,
            StageName::Detect => &self.detect,
            StageName::Classify => &self.classify,
        }
    }
}

/// Durations are written as whole milliseconds (`max_delay = 10`), which reads the same in TOML and env.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

/// What every service needs to reach the outside world. Unknown top-level keys are allowed (other
/// tools share the `PRISM_` prefix, e.g. `PRISM_HOME`); unknown keys inside a section are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub s3: S3Settings,
    pub couchdb: CouchSettings,
    pub topics: Topics,
    pub consumer: ConsumerSettings,
    /// How each service takes its messages.
    pub intake: Intakes,
    /// Where users upload (the bucket watcher lists it; events may name others).
    pub input_bucket: String,
    /// Where stages write; events for it are ignored so Prism never processes its own output.
    pub output_bucket: String,
    /// Claims not finished within this time are taken over (the worker holding them is presumed dead).
    #[serde(with = "millis")]
    pub claim_lease: Duration,
    /// The stages dedup sends new content to.
    pub enabled_stages: Vec<StageName>,
    /// What each stage makes; part of its fingerprint.
    pub stages: StageParams,
    /// Where the detect service finds its model (not part of the fingerprint: the digest is).
    pub detect: DetectRuntime,
    /// Where the classify service finds its model (not part of the fingerprint: the digest is).
    pub classify: ClassifyRuntime,
    /// The HTTP gateway (`prism serve gateway`, `prism run --web`).
    pub gateway: GatewaySettings,
    /// Where every service serves `/metrics`, `/healthz` and `/readyz`.
    pub observe: ObserveSettings,
    /// The batch job manager (`prism serve jobs`).
    pub jobs: JobSettings,
}

/// How the job manager drives batch jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Objects of one job in the pipeline at once: listing pauses above it. Keeps a job's queued
    /// work (and what a cancel must skip) small, and its claims inside their lease.
    pub window: u64,
    /// Keys listed per page (S3 answers at most 1,000); the listing's progress is stored after
    /// each page, so a restarted manager announces at most this many objects twice.
    pub page_keys: usize,
    /// A manager replica drives a job while its lease holds; a replica that died is replaced
    /// after this.
    #[serde(with = "millis")]
    pub lease: Duration,
    /// How often the manager looks at the jobs.
    #[serde(with = "millis")]
    pub poll: Duration,
    /// The price of one vCPU-hour the job summary's cost estimate uses (`prism plan`'s default
    /// too): [`DEFAULT_VCPU_HOUR_USD`].
    pub vcpu_hour_usd: f64,
}

/// Default price of an always-on vCPU-hour: AWS EC2 on-demand c7i.large (2 vCPU, 4 GiB, x86 with
/// AVX-512, which the inference kernels use), Linux, us-east-1, $0.08925 an hour, halved. From
/// <https://aws.amazon.com/ec2/pricing/on-demand/> as listed in 2024-2025; not re-checked on the
/// day this was written (2026-11-30, no access to the page from here). A default to override.
pub const DEFAULT_VCPU_HOUR_USD: f64 = 0.08925 / 2.0;

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            window: 500,
            page_keys: 1000,
            lease: Duration::from_secs(15),
            poll: Duration::from_millis(500),
            vcpu_hour_usd: DEFAULT_VCPU_HOUR_USD,
        }
    }
}

/// The observability endpoints of a service (not of `prism run`, which ends when its folder is
/// done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObserveSettings {
    /// `host:port`; port 0 takes a free one (logged). Containers set `0.0.0.0:9464`; services
    /// sharing a host each need their own port.
    pub listen: String,
}

impl Default for ObserveSettings {
    fn default() -> Self {
        ObserveSettings {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// The HTTP gateway: where it listens, what it accepts, who may use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// `host:port` to listen on.
    pub listen: String,
    /// Largest upload accepted (413 above); unset means the stages' byte limit, since a larger
    /// upload could only be dead-lettered.
    pub max_upload_bytes: Option<u64>,
    /// The admin API's token (bearer, or the password of basic auth); empty with no file means
    /// the admin API refuses everyone.
    pub admin_token: Secret,
    pub admin_token_file: Option<PathBuf>,
    /// Whether the gateway publishes the upload event of what it stores. Off where the S3 server
    /// notifies Kafka itself (MinIO in compose.yaml): dedup would get each upload twice. /predict
    /// for an object already stored always announces it.
    pub announce_uploads: bool,
    /// When true the upload page and its API ask for the admin token too (basic auth, so the
    /// browser asks once and sends it on every request, the live results' stream included).
    pub protect_uploads: bool,
    /// Longest a request may take, but the live stream and /predict's own wait.
    #[serde(with = "millis")]
    pub request_timeout: Duration,
    /// Longest an upload may take from its first byte to its answer.
    #[serde(with = "millis")]
    pub upload_timeout: Duration,
    /// Longest a client may pause while sending a body (a stalled or very slow client).
    #[serde(with = "millis")]
    pub body_idle_timeout: Duration,
    /// How long /predict waits for its result unless the request says (`?timeout=30s`).
    #[serde(with = "millis")]
    pub predict_timeout: Duration,
}

/// Where the gateway listens unless configured: every interface, as a container needs.
pub const DEFAULT_GATEWAY_LISTEN: &str = "0.0.0.0:8080";

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: DEFAULT_GATEWAY_LISTEN.into(),
            max_upload_bytes: None,
            admin_token: Secret::default(),
            admin_token_file: None,
            announce_uploads: true,
            protect_uploads: false,
            // Reads of results and objects answer in milliseconds; ten seconds is a server away.
            request_timeout: Duration::from_secs(10),
            // A phone on a slow uplink sends a 50 MB photo in well under two minutes.
            upload_timeout: Duration::from_secs(120),
            // Even a poor mobile link delivers some bytes every few seconds.
            body_idle_timeout: Duration::from_secs(10),
            // The seed microservice's clients waited up to 30 s.
            predict_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectRuntime {
    /// The YOLOv8 ONNX file; empty means `$PRISM_HOME/models/yolov8n.onnx`, where
    /// `deploy/local/fetch-assets.sh` puts it.
    pub weights: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyRuntime {
    /// EfficientNet-Lite0's safetensors; empty means
    /// `$PRISM_HOME/models/efficientnet-lite0.safetensors`, where `deploy/local/fetch-assets.sh`
    /// puts it.
    pub weights: Option<PathBuf>,
    /// The ImageNet class names; empty means `$PRISM_HOME/models/imagenet1k-labels.json`.
    pub labels: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kafka: KafkaSettings::default(),
            s3: S3Settings::default(),
            couchdb: CouchSettings::default(),
            topics: Topics::default(),
            consumer: ConsumerSettings::default(),
            intake: Intakes::default(),
            input_bucket: "prism-input".into(),
            output_bucket: "prism-output".into(),
            claim_lease: Duration::from_secs(300),
            enabled_stages: StageName::ALL.to_vec(),
            stages: StageParams::default(),
            detect: DetectRuntime::default(),
            classify: ClassifyRuntime::default(),
            gateway: GatewaySettings::default(),
            observe: ObserveSettings::default(),
            jobs: JobSettings::default(),
        }
    }
}

/// Reads a secret given inline or as a file (the file wins, trailing newline dropped).
pub fn resolve_secret(inline: &Secret, file: Option<&std::path::Path>) -> std::io::Result<Secret> {
    match file {
        Some(path) => Ok(Secret::new(
            std::fs::read_to_string(path)?.trim_end_matches(['\r', '\n']),
        )),
        None => Ok(inline.clone()),
    }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; that is figment's API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn env_overrides_defaults_and_secrets_stay_hidden() {
        Jail::expect_with(|jail| {
            jail.set_env("PRISM_KAFKA__BROKERS", "k1:9092,k2:9092");
            jail.set_env("PRISM_COUCHDB__PASSWORD", "hunter2");
            jail.set_env("PRISM_INTAKE__THUMBNAIL__CONCURRENCY", "1");
            jail.set_env("PRISM_TOPICS__UPLOADS", "custom.uploads");
            jail.set_env("PRISM_INTAKE__CLASSIFY__MAX_DELAY", "2000");
            let settings: Settings = load().map_err(|e| e.to_string())?;
            assert_eq!(settings.kafka.brokers, "k1:9092,k2:9092");
            // One field of a section set; the rest keep the service's defaults.
            assert_eq!(settings.intake.thumbnail.concurrency(), 1);
            assert_eq!(settings.intake.thumbnail.max_batch, 1);
            assert_eq!(settings.intake.detect.max_batch, 8);
            assert_eq!(settings.topics.uploads, "custom.uploads");
            assert_eq!(settings.topics.detect_results, "prism.results.detect");
            assert_eq!(settings.intake.classify.max_delay, Duration::from_secs(2));
            assert_eq!(settings.intake.classify.max_batch, 8);
            assert_eq!(settings.topics.classify_jobs, "prism.jobs.classify");
            assert_eq!(settings.enabled_stages, StageName::ALL);
            assert_eq!(settings.couchdb.password.expose(), "hunter2");
            assert!(!format!("{settings:?}").contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("prism.toml", "[kafka]\nbrokerz = \"typo\"\n")?;
            jail.set_env("PRISM_CONFIG", "prism.toml");
            let error = load::<Settings>().unwrap_err();
            assert!(error.to_string().contains("brokerz"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = std::env::temp_dir().join(format!("prism-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = resolve_secret(&Secret::new("inline"), Some(&path)).unwrap();
        assert_eq!(secret.expose(), "s3cret");
        assert_eq!(
            resolve_secret(&Secret::new("inline"), None)
                .unwrap()
                .expose(),
            "inline"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
