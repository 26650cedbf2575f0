//! The served pipeline over the real servers (Kafka, S3, CouchDB: `deploy/local/servers.sh`), as
//! child processes of the release `prism` binary: `prism serve dedup`, N replicas of each stage
//! asked (`prism serve thumbnail`, …) and, for batch jobs, `prism serve jobs`, each run on its own
//! topics, buckets and database so that no claim of an earlier run makes its work a copy.
//! Notifications are published as MinIO publishes them, right after the uploads; results are read
//! from the result topic.

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, stream};
use prism_core::contract::ingest::UploadEvent;
use prism_core::contract::{SourceObject, StageName, StageResult};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::{self, Settings};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A consumer group's first join alone takes seconds with Tansu on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(180);

/// The variables `deploy/local/servers.sh env` exports, without which nothing here can run.
pub const SERVER_VARIABLES: [&str; 6] = [
    "PRISM_KAFKA__BROKERS",
    "PRISM_S3__ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "PRISM_COUCHDB__URL",
    "PRISM_COUCHDB__PASSWORD",
];

/// What a served pipeline runs beside dedup.
#[derive(Debug, Clone)]
pub struct Layout {
    pub stages: Vec<StageName>,
    /// Replicas of each stage.
    pub replicas: usize,
    /// Whether the batch job manager (`prism serve jobs`) runs too.
    pub jobs: bool,
}

impl Layout {
    /// `replicas` thumbnail replicas and no job manager.
    pub fn thumbnails(replicas: usize) -> Layout {
        Layout {
            stages: vec![StageName::Thumbnail],
            replicas,
            jobs: false,
        }
    }
}

/// One running service process.
struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A served pipeline on its own names; its processes are stopped (SIGTERM) when dropped.
pub struct Pipeline {
    pub settings: Settings,
    environment: Vec<(String, String)>,
    prism: PathBuf,
    logs: PathBuf,
    services: Vec<Service>,
}

impl Pipeline {
    /// Makes this run's buckets and topics and starts dedup, then each stage's replicas one at
    /// a time (Tansu rebalances a group reliably one member at a time), each once its partitions
    /// are assigned, then the job manager if asked. `extra` are settings for every service
    /// (`PRISM_…` variables).
    pub async fn start(
        prism: &Path,
        layout: &Layout,
        work: &Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Pipeline> {
        ensure!(
            prism.exists(),
            "{} is missing: cargo build --release -p prism-cli, or name it with --prism",
            prism.display()
        );
        for variable in SERVER_VARIABLES {
            ensure!(
                std::env::var_os(variable).is_some(),
                "{variable} is not set: the served experiments need the real servers \
                 (deploy/local/servers.sh start && eval \"$(deploy/local/servers.sh env)\")"
            );
        }
        let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let logs = work.join(format!("served-{run}"));
        std::fs::create_dir_all(&logs)?;
        // With cooperative-sticky, Prism's default, Tansu 0.6 gives a member that joins a running
        // group no partitions (deploy/local/servers.sh); the eager strategies work.
        let tansu = logs.join("tansu.toml");
        std::fs::write(
            &tansu,
            "[kafka.properties]\n\"partition.assignment.strategy\" = \"range,roundrobin\"\n",
        )?;
        let mut settings: Settings = config::load().context("Prism's configuration")?;
        let mut environment = isolate(&mut settings, &run, &layout.stages);
        environment.push(("PRISM_CONFIG".into(), tansu.display().to_string()));
        environment.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let buckets = Buckets::s3(&settings.s3);
        for bucket in [&settings.input_bucket, &settings.output_bucket] {
            buckets.create_bucket(bucket).await?;
        }
        prism_core::ports::bus::kafka::ensure_topics(&settings.kafka, &settings.topics.all())
            .await
            .context("creating this run's topics (is Kafka up?)")?;
        let mut pipeline = Pipeline {
            settings,
            environment,
            prism: prism.to_path_buf(),
            logs,
            services: Vec::new(),
        };
        pipeline.spawn("dedup", &["serve", "dedup"])?;
        // Dedup and the stages read two lanes, each its own consumer group.
        pipeline.wait_for_assignment("dedup", 2).await?;
        for &stage in &layout.stages {
            for replica in 1..=layout.replicas {
                let name = format!("{stage}-{replica}");
                pipeline.spawn(&name, &["serve", stage.as_str()])?;
                pipeline.wait_for_assignment(&name, 2).await?;
            }
        }
        if layout.jobs {
            pipeline.spawn("jobs", &["serve", "jobs"])?;
            pipeline.wait_for_assignment("jobs", 1).await?;
        }
        Ok(pipeline)
    }

    fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&self.prism)
            .args(args)
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("starting prism {args:?}"))?;
        self.services.push(Service {
            name: name.into(),
            child,
            log,
        });
        Ok(())
    }

    /// Waits until `name` logs that each of its `groups` consumer groups gave it partitions.
    async fn wait_for_assignment(&mut self, name: &str, groups: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.check_running()?;
            let service = self.services.iter().find(|s| s.name == name).unwrap();
            let log = std::fs::read_to_string(&service.log).unwrap_or_default();
            if log.matches("partitions assigned").count() >= groups {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{name} got no partitions within {DEADLINE:?}; its log: {}",
                service.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails, with the end of its log, if a service exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for service in &mut self.services {
            if let Some(status) = service.child.try_wait()? {
                bail!(
                    "{} exited with {status}:\n{}",
                    service.name,
                    log_tail(service)
                );
            }
        }
        Ok(())
    }

    /// Fails, with the end of its log, if a service exited (its process is a zombie, not yet
    /// waited for): [`Pipeline::check_running`] for those who share the pipeline.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        for service in &self.services {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", service.child.id()))
                .unwrap_or_default();
            if process_state(&stat).is_none_or(|state| state == "Z") {
                bail!("{} exited:\n{}", service.name, log_tail(service));
            }
        }
        Ok(())
    }

    /// User plus system time so far of the services whose name starts with `prefix`.
    pub fn cpu_seconds(&self, prefix: &str) -> anyhow::Result<f64> {
        self.matching(prefix)
            .map(|service| process_cpu_seconds(service.child.id()))
            .sum()
    }

    /// The sum of the peak resident sets (VmHWM) of the services whose name starts with `prefix`.
    pub fn sum_of_peaks_kib(&self, prefix: &str) -> u64 {
        self.matching(prefix)
            .filter_map(|service| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", service.child.id())).ok()?;
                crate::measure::status_kib(&status, "VmHWM")
            })
            .sum()
    }

    fn matching<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .iter()
            .filter(move |s| s.name.starts_with(prefix))
    }

    /// A producer for this run's notifications.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka.brokers)
            .set("linger.ms", "1")
            .create()?)
    }

    /// A producer and a reader of thumbnail results, after one small image went through:
    /// connections and the result reader's group join are not what an experiment measures.
    pub async fn warmed_up(&self) -> anyhow::Result<(FutureProducer, Results)> {
        let producer = self.producer()?;
        let results = self.results(StageName::Thumbnail).await?;
        let warmup = self.upload(vec![crate::thumbnails::warmup_jpeg()]).await?;
        self.notify(&producer, &warmup).await?;
        results.collect(&[warmup[0].key.clone()]).await?;
        Ok((producer, results))
    }

    /// A consumer of this run's `stage` results from the beginning, its group joined.
    pub async fn results(&self, stage: StageName) -> anyhow::Result<Results> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka.brokers)
            .set(
                "group.id",
                format!("{}-loadgen", self.settings.kafka.group_prefix),
            )
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        consumer.subscribe(&[self.settings.topics.results(stage)])?;
        Ok(Results { consumer })
    }

    /// Uploads `(key, bytes)` to this run's input bucket, 8 at a time.
    pub async fn upload(&self, objects: Vec<(String, Bytes)>) -> anyhow::Result<Vec<SourceObject>> {
        let bucket = &self.settings.input_bucket;
        let sources = objects
            .iter()
            .map(|(key, bytes)| SourceObject {
                bucket: bucket.clone(),
                key: key.clone(),
                // Dedup learns the ETag of what it hashes.
                etag: String::new(),
                size: bytes.len() as u64,
                batch_job: None,
            })
            .collect();
        crate::upload(&Buckets::s3(&self.settings.s3), bucket, objects, 8).await?;
        Ok(sources)
    }

    /// One MinIO-format notification per object, as fast as Kafka takes them.
    pub async fn notify(
        &self,
        producer: &FutureProducer,
        objects: &[SourceObject],
    ) -> anyhow::Result<()> {
        let topic = &self.settings.topics.uploads;
        stream::iter(objects)
            .map(|object| async move {
                let event = UploadEvent::for_object(object, None, Utc::now());
                let payload = serde_json::to_vec(&event)?;
                let record = FutureRecord::to(topic).key(&object.key).payload(&payload);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(error, _)| anyhow::anyhow!("publishing a notification: {error}"))?;
                anyhow::Ok(())
            })
            .buffer_unordered(1000)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for service in &mut self.services {
            stop_gracefully(&mut service.child);
        }
    }
}

/// The last lines of a service's log.
fn log_tail(service: &Service) -> String {
    let log = std::fs::read_to_string(&service.log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The state letter of a /proc/PID/stat line (`R`, `S`, `Z`…), after the command name.
fn process_state(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().next()
}

/// SIGTERM, so that consumers leave their groups at once; SIGKILL if that takes too long.
fn stop_gracefully(child: &mut Child) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The run's names as settings (for the results this process reads) and as the variables the
/// services are started with.
fn isolate(settings: &mut Settings, run: &str, stages: &[StageName]) -> Vec<(String, String)> {
    let topic = |name: &str| format!("loadgen-{run}.{name}");
    let topics = &mut settings.topics;
    let names: [(&str, &mut String, String); 12] = [
        (
            "PRISM_TOPICS__UPLOADS",
            &mut topics.uploads,
            topic("uploads"),
        ),
        (
            "PRISM_TOPICS__THUMBNAIL_JOBS",
            &mut topics.thumbnail_jobs,
            topic("jobs.thumbnail"),
        ),
        (
            "PRISM_TOPICS__DETECT_JOBS",
            &mut topics.detect_jobs,
            topic("jobs.detect"),
        ),
        (
            "PRISM_TOPICS__CLASSIFY_JOBS",
            &mut topics.classify_jobs,
            topic("jobs.classify"),
        ),
        (
            "PRISM_TOPICS__THUMBNAIL_RESULTS",
            &mut topics.thumbnail_results,
            topic("results.thumbnail"),
        ),
        (
            "PRISM_TOPICS__DETECT_RESULTS",
            &mut topics.detect_results,
            topic("results.detect"),
        ),
        (
            "PRISM_TOPICS__CLASSIFY_RESULTS",
            &mut topics.classify_results,
            topic("results.classify"),
        ),
        (
            "PRISM_TOPICS__DEADLETTER",
            &mut topics.deadletter,
            topic("deadletter"),
        ),
        (
            "PRISM_INPUT_BUCKET",
            &mut settings.input_bucket,
            format!("loadgen-{run}-in"),
        ),
        (
            "PRISM_OUTPUT_BUCKET",
            &mut settings.output_bucket,
            format!("loadgen-{run}-out"),
        ),
        (
            "PRISM_COUCHDB__DATABASE",
            &mut settings.couchdb.database,
            format!("loadgen-{run}"),
        ),
        (
            "PRISM_KAFKA__GROUP_PREFIX",
            &mut settings.kafka.group_prefix,
            format!("loadgen-{run}"),
        ),
    ];
    let mut environment: Vec<(String, String)> = names
        .into_iter()
        .map(|(variable, field, value)| {
            field.clone_from(&value);
            (variable.to_string(), value)
        })
        .collect();
    settings.enabled_stages = stages.to_vec();
    let enabled: Vec<&str> = stages.iter().map(|stage| stage.as_str()).collect();
    environment.push((
        "PRISM_ENABLED_STAGES".into(),
        serde_json::to_string(&enabled).expect("strings"),
    ));
    environment.extend(
        [
            // Tansu makes a new group's first join wait half the session timeout.
            ("PRISM_KAFKA__SESSION_TIMEOUT_MS", "6000"),
            // Every service on its own free port for /metrics.
            ("PRISM_OBSERVE__LISTEN", "127.0.0.1:0"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    environment
}

/// One stage's results of a run, as they arrive.
pub struct Results {
    consumer: StreamConsumer,
}

impl Results {
    /// Reads results until every key of `keys` has one (others, such as a warm-up's, count too
    /// when named); returns them with the time each arrived.
    pub async fn collect(&self, keys: &[String]) -> anyhow::Result<Vec<(StageResult, Instant)>> {
        let mut pending: std::collections::HashSet<&str> =
            keys.iter().map(String::as_str).collect();
        let mut found = Vec::with_capacity(keys.len());
        let mut stream = self.consumer.stream();
        let deadline = Instant::now() + DEADLINE;
        while !pending.is_empty() {
            let message = tokio::time::timeout_at(deadline.into(), stream.next())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{} results missing after {DEADLINE:?}, such as {:?}",
                        pending.len(),
                        pending.iter().next()
                    )
                })?
                .context("the result stream ended")??;
            let result: StageResult = serde_json::from_slice(message.payload().unwrap_or_default())
                .context("a stage result")?;
            if pending.remove(result.source.key.as_str()) {
                found.push((result, Instant::now()));
            }
        }
        Ok(found)
    }
}

/// User plus system time of a process so far, from /proc/PID/stat.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    parse_stat_cpu_seconds(&stat)
}

/// utime + stime of a /proc/PID/stat line, in seconds (USER_HZ is 100 on every architecture).
pub fn parse_stat_cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    // The command name, in parentheses, may hold spaces: count fields after it.
    let (_, after) = stat.rsplit_once(')').context("a /proc stat line")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |at: usize| -> anyhow::Result<u64> {
        Ok(fields.get(at).context("a short stat line")?.parse()?)
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_command_name_with_spaces() {
        let stat = "4242 (prism serve x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9";
        assert_eq!(parse_stat_cpu_seconds(stat).unwrap(), 3.0);
        assert!(parse_stat_cpu_seconds("4242 (x) S 1").is_err());
    }

    #[test]
    fn reads_a_process_state_after_a_command_name_with_spaces() {
        assert_eq!(process_state("4242 (prism serve x) Z 1 4242"), Some("Z"));
        assert_eq!(process_state(""), None);
    }

    #[test]
    fn a_run_has_names_of_its_own_in_settings_and_variables_alike() {
        let mut settings = Settings::default();
        let environment = isolate(&mut settings, "abc", &[StageName::Thumbnail]);
        let variable = |name: &str| {
            environment
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(settings.topics.uploads, "loadgen-abc.uploads");
        assert_eq!(variable("PRISM_TOPICS__UPLOADS"), settings.topics.uploads);
        assert_eq!(variable("PRISM_INPUT_BUCKET"), settings.input_bucket);
        assert_eq!(variable("PRISM_COUCHDB__DATABASE"), "loadgen-abc");
        assert_eq!(variable("PRISM_ENABLED_STAGES"), "[\"thumbnail\"]");
    }
}
