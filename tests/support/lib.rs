//! Helpers shared by Prism's end-to-end tests (`pipeline`, `faults`, `rebalance`, `reconcile`,
//! `hostile`): this run's names, the `prism` binary and its service processes, private servers,
//! generated images and the observer that files every message it sees.

use bytes::Bytes;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use futures::StreamExt;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use prism_core::contract::schemas::{MessageKind, Schemas};
use prism_core::contract::{DeadLetter, StageName, StageResult};
use prism_core::ports::claims::{ClaimStatus, couch::CouchIndex};
use prism_core::ports::store::Buckets;
use prism_core::runtime::config::{self, Lane, Settings, Topics};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub mod browser;

/// Generous: the first consumer-group joins alone take seconds on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// This run's topics, buckets and database, as environment variables for the services.
pub fn run_environment(run: &str) -> Vec<(String, String)> {
    let topic = |name: &str| format!("e2e-{run}.{name}");
    [
        ("PRISM_TOPICS__UPLOADS", topic("uploads")),
        ("PRISM_TOPICS__THUMBNAIL_JOBS", topic("jobs.thumbnail")),
        ("PRISM_TOPICS__DETECT_JOBS", topic("jobs.detect")),
        ("PRISM_TOPICS__CLASSIFY_JOBS", topic("jobs.classify")),
        (
            "PRISM_TOPICS__THUMBNAIL_RESULTS",
            topic("results.thumbnail"),
        ),
        ("PRISM_TOPICS__DETECT_RESULTS", topic("results.detect")),
        ("PRISM_TOPICS__CLASSIFY_RESULTS", topic("results.classify")),
        ("PRISM_TOPICS__DEADLETTER", topic("deadletter")),
        ("PRISM_INPUT_BUCKET", format!("e2e-{run}-in")),
        ("PRISM_OUTPUT_BUCKET", format!("e2e-{run}-out")),
        ("PRISM_COUCHDB__DATABASE", format!("e2e-{run}")),
        ("PRISM_KAFKA__GROUP_PREFIX", format!("e2e-{run}")),
        // Tansu makes a new group's first join wait half the session timeout.
        ("PRISM_KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        (
            "PRISM_ENABLED_STAGES",
            "[\"thumbnail\", \"detect\", \"classify\"]".into(),
        ),
        // Every service on its own free port for /metrics (a test that scrapes names its own).
        ("PRISM_OBSERVE__LISTEN", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Settings that work around Tansu 0.6 for the tests that scale consumer groups, as a config
/// file (`PRISM_CONFIG`, since a librdkafka property's dots cannot be written in a variable's
/// name), removed on drop. With `cooperative-sticky`, Prism's default, Tansu never hands a
/// member that joins a running group any partitions, nor moves those of a member that left:
/// their messages stay unconsumed. The eager strategies rebalance correctly.
pub struct TansuConfig(PathBuf);

impl TansuConfig {
    pub fn write(run: &str) -> Self {
        let path = std::env::temp_dir().join(format!("prism-e2e-{run}.toml"));
        std::fs::write(
            &path,
            "[kafka.properties]\n\"partition.assignment.strategy\" = \"range,roundrobin\"\n",
        )
        .unwrap();
        TansuConfig(path)
    }

    pub fn variable(&self) -> (String, String) {
        ("PRISM_CONFIG".into(), self.0.display().to_string())
    }
}

impl Drop for TansuConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh name for one run's topics, buckets and database.
pub fn run_name() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// Settings from the real servers' environment plus this run's names; fails loudly without servers.
pub fn settings_for(environment: &[(String, String)]) -> Settings {
    for required in prism_loadgen::served::SERVER_VARIABLES {
        assert!(
            environment.iter().any(|(name, _)| name == required) || std::env::var(required).is_ok(),
            "{required} is not set: this test needs the real servers. Run `deploy/local/test.sh`, or \
             `deploy/local/servers.sh start && eval \"$(deploy/local/servers.sh env)\"` first."
        );
    }
    config::load_with(overrides(environment)).expect("configuration")
}

/// `PRISM_…` variables as configuration: the same names the services are started with, read the
/// way the environment is (`PRISM_A__B` is `a.b`, values parsed as figment parses variables).
fn overrides(environment: &[(String, String)]) -> Figment {
    environment
        .iter()
        .fold(Figment::new(), |figment, (name, value)| {
            match name.as_str() {
                "PRISM_CONFIG" => figment.merge(Toml::file_exact(value)),
                // The services read these from the environment, as every AWS client does.
                "AWS_ACCESS_KEY_ID" => figment.merge(Serialized::global("s3.access_key_id", value)),
                "AWS_SECRET_ACCESS_KEY" => {
                    figment.merge(Serialized::global("s3.secret_access_key", value))
                }
                "AWS_REGION" => figment.merge(Serialized::global("s3.region", value)),
                "AWS_ENDPOINT_URL" => figment,
                _ => {
                    let path = name
                        .strip_prefix("PRISM_")
                        .unwrap_or_else(|| panic!("{name} is not a Prism setting"))
                        .to_lowercase()
                        .replace("__", ".");
                    let value: figment::value::Value = value.parse().expect("parses");
                    figment.merge(Serialized::global(&path, value))
                }
            }
        })
}

/// The `prism` binary of this build, built first if needed (it lives in another package, so
/// cargo does not build it for these tests by itself).
pub fn prism_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| built_binary("prism-cli", "prism"))
}

/// The `prism-loadgen` binary of this build, built first if needed.
pub fn loadgen_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| built_binary("prism-loadgen", "prism-loadgen"))
}

/// `bin` of `package`, built in this test's profile.
fn built_binary(package: &str, bin: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", package, "--bin", bin]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building {bin} failed");
    profile_dir.join(bin)
}

/// Buckets and topics for a run, created before the services start.
pub async fn prepare(settings: &Settings) {
    prism_loadgen::create_bucket(&settings.s3, &settings.input_bucket)
        .await
        .unwrap();
    prism_loadgen::create_bucket(&settings.s3, &settings.output_bucket)
        .await
        .unwrap();
    prism_core::ports::bus::kafka::ensure_topics(&settings.kafka, &settings.topics.all())
        .await
        .expect("Kafka must be reachable");
}

/// A consumer of every topic of this run, from the beginning.
pub fn observer(settings: &Settings, run: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", format!("e2e-{run}-observer"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let topics = settings.topics.all();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).unwrap();
    consumer
}

/// One running `prism` process.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A gateway started by [`Services::start_gateway`].
pub struct Gateway {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub url: String,
    pub admin_token: String,
}

/// The service processes, killed (and their logs shown) when the test ends.
pub struct Services {
    environment: Vec<(String, String)>,
    logs: PathBuf,
    children: Vec<Running>,
}

impl Services {
    /// Starts one process per command, each named after its arguments (`serve-dedup`).
    pub fn start(environment: &[(String, String)], commands: &[&[&str]]) -> Self {
        let logs = std::env::temp_dir().join(format!("prism-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&logs).unwrap();
        let mut services = Services {
            environment: environment.to_vec(),
            logs,
            children: Vec::new(),
        };
        for args in commands {
            services.spawn(&args.join("-"), args);
        }
        services
    }

    /// Starts `prism ARGS` as `name`; a name started again appends to the same log.
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        self.spawn_with(name, args, &[]);
    }

    /// Starts `prism serve gateway` as `gateway` on a free port of 127.0.0.1, with a fresh admin
    /// token and `settings` (`PRISM_GATEWAY__…` variables) on top of the run's, and waits until
    /// it accepts connections.
    pub fn start_gateway(&mut self, settings: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let listen = format!("127.0.0.1:{port}");
        let mut environment = vec![
            ("PRISM_GATEWAY__LISTEN".to_string(), listen.clone()),
            (
                "PRISM_GATEWAY__ADMIN_TOKEN".to_string(),
                admin_token.clone(),
            ),
        ];
        environment.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let logged_before = self.log("gateway").len();
        self.spawn_with("gateway", &["serve", "gateway"], &environment);
        // Its own word, not a connection: another process may have taken the port meanwhile.
        let listening = format!("gateway listening address={listen}");
        let deadline = Instant::now() + DEADLINE;
        while !self.log("gateway")[logged_before..].contains(&listening) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "the gateway never listened on {listen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Gateway {
            url: format!("http://{listen}"),
            admin_token,
        }
    }

    /// [`Services::spawn`] with variables on top of the run's.
    pub fn spawn_with(&mut self, name: &str, args: &[&str], extra: &[(String, String)]) {
        assert!(
            self.children.iter().all(|r| r.name != name),
            "{name} is already running"
        );
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(prism_binary())
            .args(args)
            .envs(self.environment.iter().chain(extra).map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prism {args:?}: {e}"));
        self.children.push(Running {
            name: name.to_string(),
            child,
            log,
        });
    }

    fn take(&mut self, name: &str) -> Running {
        let at = self
            .children
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        self.children.remove(at)
    }

    /// The process id of `name`, to read its CPU time.
    pub fn pid(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} is not running"))
            .child
            .id()
    }

    /// SIGKILL: the process gets no chance to finish, commit or leave its consumer group.
    pub fn kill(&mut self, name: &str) {
        let mut running = self.take(name);
        running.child.kill().unwrap();
        running.child.wait().unwrap();
    }

    /// SIGTERM and wait: the process finishes its batch and leaves its consumer group.
    pub fn stop(&mut self, name: &str) {
        stop_gracefully(&mut self.take(name).child);
    }

    /// Everything `name` has logged so far (all its runs).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Where the services' logs go (kept when the test fails): room for a test's own files too.
    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    pub fn assert_running(&mut self) {
        for Running { name, child, log } in &mut self.children {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "service {name} exited with {status}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for Running { name, child, log } in &mut self.children {
            stop_gracefully(child);
            if panicking {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {name} ---");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if panicking {
            eprintln!("service logs: {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// SIGTERM, so consumers leave their groups at once, then SIGKILL if that takes too long.
fn stop_gracefully(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kafka, S3 and CouchDB of this test alone (`deploy/local/servers.sh` with its own run folder and
/// free ports), for tests that kill and restart servers other tests are using. Stopped on drop.
pub struct PrivateServers {
    dir: PathBuf,
    overrides: Vec<(String, String)>,
    /// What clients need: `servers.sh env` of these servers.
    pub environment: Vec<(String, String)>,
}

impl PrivateServers {
    /// Starts them and points this process's environment (inherited by the services) at them.
    pub fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("prism-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(4);
        let overrides: Vec<(String, String)> = [
            ("PRISM_RUN_DIR", dir.display().to_string()),
            ("PRISM_KAFKA_PORT", ports[0].to_string()),
            ("PRISM_S3_PORT", ports[1].to_string()),
            ("PRISM_S3_RPC_PORT", ports[2].to_string()),
            ("PRISM_COUCHDB_PORT", ports[3].to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut servers = PrivateServers {
            dir,
            overrides,
            environment: Vec::new(),
        };
        servers.control(&["start"]);
        let printed = servers.run(
            "bash",
            &[
                "-c",
                "eval \"$(\"$0\" env)\" && env -0",
                &servers_script().display().to_string(),
            ],
        );
        const CLIENT_VARIABLES: [&str; 9] = [
            "PRISM_KAFKA__BROKERS",
            "PRISM_S3__ENDPOINT",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "PRISM_COUCHDB__URL",
            "PRISM_COUCHDB__USERNAME",
            "PRISM_COUCHDB__PASSWORD",
        ];
        servers.environment = printed
            .split('\0')
            .filter_map(|line| line.split_once('='))
            .filter(|(key, _)| CLIENT_VARIABLES.contains(key))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(servers.environment.len(), CLIENT_VARIABLES.len());
        servers
    }

    /// `servers.sh ARGS` for these servers; panics with its output when it fails.
    pub fn control(&self, args: &[&str]) {
        self.run(&servers_script().display().to_string(), args);
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .envs(self.overrides.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}\nThe servers are installed by deploy/local/install.sh \
             (deploy/local/test.sh runs it).",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Their run folder (data, logs), removed when they stop unless the test failed.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of a server's log.
    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PrivateServers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["kafka", "s3", "couchdb"] {
                eprintln!(
                    "--- last lines of the private {name} server ---\n{}",
                    self.log(name)
                );
            }
        }
        let stopped = Command::new(servers_script())
            .arg("stop")
            .envs(self.overrides.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!("the private servers' data and logs: {}", self.dir.display());
        } else if stopped.is_ok_and(|status| status.success()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "could not stop the private servers: see {}",
                self.dir.display()
            );
        }
    }
}

fn servers_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/servers.sh")
}

/// A port nobody uses now (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Ports nobody uses now, below Linux's ephemeral range (32768 and up) so that no client socket
/// takes one as its own port meanwhile, and a probe never connects to itself.
/// Never the same port twice in one test process: tests running at once would share it.
fn free_ports(count: usize) -> Vec<u16> {
    static GIVEN: OnceLock<std::sync::Mutex<BTreeSet<u16>>> = OnceLock::new();
    let mut given = GIVEN.get_or_init(Default::default).lock().unwrap();
    let start = 20_000 + (std::process::id() % 1000) as u16 * 10;
    let ports: Vec<u16> = (start..32_000)
        .filter(|port| !given.contains(port))
        .filter(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .take(count)
        .collect();
    given.extend(&ports);
    assert_eq!(ports.len(), count, "no {count} free ports from {start}");
    ports
}

pub fn encode(image: DynamicImage, format: ImageFormat) -> Bytes {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    Bytes::from(bytes)
}

/// A picture no other call makes: gradients and stripes seeded by `seed`.
pub fn picture(seed: u32, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let stripe = ((x / (4 + seed % 7)) + (y / (5 + seed % 5))) % 2;
        Rgb([
            ((x * 255 / width.max(1)) as u8).wrapping_add((seed * 37) as u8),
            ((y * 255 / height.max(1)) as u8).wrapping_add(stripe as u8 * 90),
            (seed * 53 % 256) as u8,
        ])
    })
}

/// An upload of a generated picture (see [`picture`]) in `format`.
pub fn generated(key: &str, seed: u32, (width, height): (u32, u32), format: ImageFormat) -> Upload {
    Upload {
        key: key.into(),
        bytes: encode(
            DynamicImage::ImageRgb8(picture(seed, width, height)),
            format,
        ),
        size: Some((width, height)),
    }
}

#[derive(Clone)]
pub struct Upload {
    pub key: String,
    pub bytes: Bytes,
    /// Displayed size of the source, `None` for the corrupt file.
    pub size: Option<(u32, u32)>,
}

pub fn to_pairs(list: &[Upload]) -> Vec<(String, Bytes)> {
    list.iter()
        .map(|u| (u.key.clone(), u.bytes.clone()))
        .collect()
}

/// Uploads one object, retrying while S3 is unreachable (the fault tests restart it).
pub async fn upload_until_stored(buckets: &Buckets, bucket: &str, upload: &Upload) {
    let started = Instant::now();
    while let Err(error) =
        prism_loadgen::upload(buckets, bucket, to_pairs(std::slice::from_ref(upload)), 1).await
    {
        assert!(
            started.elapsed() < DEADLINE,
            "could not upload {}: {error}",
            upload.key
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Default)]
pub struct Seen {
    /// By (stage, upload key).
    pub results: BTreeMap<(StageName, String), Vec<StageResult>>,
    pub dead_letters: BTreeMap<(StageName, String), Vec<DeadLetter>>,
    pub counts: HashMap<String, usize>,
    /// By upload key: the trace ids its upload events carried.
    pub announcement_traces: BTreeMap<String, BTreeSet<String>>,
    /// By upload key: the trace ids its results and dead letters carried.
    pub outcome_traces: BTreeMap<String, BTreeSet<String>>,
    /// The topics of messages that came without a `traceparent` header.
    pub untraced: Vec<String>,
}

impl Seen {
    /// Checks one message against its schema and files it by stage and upload key.
    pub fn record(&mut self, schemas: &Schemas, topics: &Topics, message: &BorrowedMessage<'_>) {
        let payload = message.payload().unwrap_or_default();
        let topic = message.topic();
        *self.counts.entry(topic.to_string()).or_default() += 1;
        // Uploads and work travel in either lane; a batch job's on topics of their own.
        let in_a_lane = |interactive: &str| {
            Lane::ALL
                .iter()
                .any(|lane| lane.topic(interactive) == topic)
        };
        let kind = if in_a_lane(&topics.uploads) {
            MessageKind::Upload
        } else if StageName::ALL
            .iter()
            .any(|&stage| in_a_lane(topics.jobs(stage)))
        {
            MessageKind::Job
        } else if topic == topics.deadletter {
            MessageKind::DeadLetter
        } else {
            MessageKind::Result
        };
        schemas.check_bytes(kind, payload).unwrap();
        let trace_id = trace_id_of(message);
        if trace_id.is_none() {
            self.untraced.push(topic.to_string());
        }
        let traced = |traces: &mut BTreeMap<String, BTreeSet<String>>, upload_key: &str| {
            if let Some(trace_id) = &trace_id {
                traces
                    .entry(upload_key.to_string())
                    .or_default()
                    .insert(trace_id.clone());
            }
        };
        match kind {
            MessageKind::Upload => {
                // Announcements are keyed `bucket/key`.
                let announced = std::str::from_utf8(message.key().unwrap_or_default()).unwrap();
                let key = announced.split_once('/').map_or(announced, |(_, key)| key);
                traced(&mut self.announcement_traces, key);
            }
            MessageKind::Result => {
                let result: StageResult = serde_json::from_slice(payload).unwrap();
                assert_eq!(
                    message.key(),
                    Some(result.content_hash.as_bytes()),
                    "results are keyed by content hash"
                );
                traced(&mut self.outcome_traces, &result.source.key);
                self.results
                    .entry((result.stage, result.source.key.clone()))
                    .or_default()
                    .push(result);
            }
            MessageKind::DeadLetter => {
                let letter: DeadLetter = serde_json::from_slice(payload).unwrap();
                let key = letter
                    .source
                    .as_ref()
                    .map(|s| s.key.clone())
                    .unwrap_or_default();
                traced(&mut self.outcome_traces, &key);
                let stage = letter
                    .stage
                    .parse()
                    .expect("stages dead-letter only their own work");
                self.dead_letters
                    .entry((stage, key))
                    .or_default()
                    .push(letter);
            }
            _ => {}
        }
    }

    /// Reads messages until `key` has an outcome in each of `stages`.
    pub async fn wait_for<'a>(
        &mut self,
        key: &str,
        stages: &[StageName],
        stream: &mut (
                 impl futures::Stream<Item = rdkafka::error::KafkaResult<BorrowedMessage<'a>>> + Unpin
             ),
        schemas: &Schemas,
        topics: &Topics,
        services: &mut Services,
    ) {
        let started = Instant::now();
        while !stages.iter().all(|&stage| self.has_outcome(stage, key)) {
            services.assert_running();
            assert!(
                started.elapsed() < DEADLINE,
                "{key} got no outcome within {DEADLINE:?}"
            );
            self.read_one(stream, schemas, topics)
                .await
                .expect("observer consumer");
        }
    }

    /// Files the next message, if one comes within half a second.
    pub async fn read_one<'a>(
        &mut self,
        stream: &mut (
                 impl futures::Stream<Item = rdkafka::error::KafkaResult<BorrowedMessage<'a>>> + Unpin
             ),
        schemas: &Schemas,
        topics: &Topics,
    ) -> rdkafka::error::KafkaResult<()> {
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(500), stream.next()).await
        {
            self.record(schemas, topics, &message?);
        }
        Ok(())
    }

    pub fn has_outcome(&self, stage: StageName, key: &str) -> bool {
        let id = (stage, key.to_string());
        self.results.contains_key(&id) || self.dead_letters.contains_key(&id)
    }
}

/// The trace id of a message's `traceparent` header (`00-<trace id>-<span id>-<flags>`).
fn trace_id_of(message: &BorrowedMessage<'_>) -> Option<String> {
    let header = message
        .headers()?
        .iter()
        .find(|header| header.key == prism_core::runtime::trace::TRACEPARENT)?;
    let traceparent = std::str::from_utf8(header.value?).ok()?;
    let trace_id = traceparent.split('-').nth(1)?;
    (trace_id.len() == 32).then(|| trace_id.to_string())
}

/// The observer and what it has filed, for the tests that watch a stream of uploads.
pub struct Listener {
    pub seen: Seen,
    consumer: StreamConsumer,
    schemas: Schemas,
    topics: Topics,
}

impl Listener {
    pub fn new(consumer: StreamConsumer, topics: &Topics) -> Self {
        Listener {
            seen: Seen::default(),
            consumer,
            schemas: Schemas::default(),
            topics: topics.clone(),
        }
    }

    /// Files the next message if one comes within half a second. A consumer error is only
    /// logged: the fault test freezes the broker under the observer, which reconnects by itself.
    pub async fn read(&mut self) {
        match tokio::time::timeout(Duration::from_millis(500), self.consumer.recv()).await {
            Ok(Ok(message)) => self.seen.record(&self.schemas, &self.topics, &message),
            Ok(Err(error)) => {
                eprintln!("observer: {error} (is the broker restarting?)");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {}
        }
    }

    /// Reads for `duration`.
    pub async fn read_for(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.read().await;
        }
    }

    /// Reads until every one of `uploads` has an outcome in every stage.
    pub async fn wait_for_all(&mut self, uploads: &[&Upload], services: &mut Services) {
        let started = Instant::now();
        while !missing(&self.seen, uploads).is_empty() {
            services.assert_running();
            assert!(
                started.elapsed() < DEADLINE,
                "uploads still without an outcome after {DEADLINE:?}: {:?}; messages seen per topic: {:?}",
                missing(&self.seen, uploads),
                self.seen.counts
            );
            self.read().await;
        }
    }
}

/// Sends one small picture through every stage, so that every consumer group has joined and every
/// stage works before the measured part of a test starts; returns that upload.
pub async fn warm_up(
    buckets: &Buckets,
    settings: &Settings,
    listener: &mut Listener,
    services: &mut Services,
) -> Upload {
    let warmup = generated("warmup.png", 10_000, (64, 48), ImageFormat::Png);
    upload_until_stored(buckets, &settings.input_bucket, &warmup).await;
    listener.wait_for_all(&[&warmup], services).await;
    warmup
}

/// A steady stream of uploads: `count` small pictures (every `copy_every`th a copy of an earlier
/// one under a new key), one every `pause`.
pub struct Stream {
    pub count: u32,
    pub copy_every: u32,
    pub pause: Duration,
}

/// The setup the fault and rebalance tests share: this run's names and settings, its buckets and
/// topics, the services, the observer, a pipeline already warm, and a stream of uploads going up.
pub struct LoadTest {
    pub settings: Settings,
    pub services: Services,
    pub listener: Listener,
    pub buckets: Buckets,
    /// What [`warm_up`] sent.
    pub warmup: Upload,
    /// The stream, going up in the background since the pipeline was warm.
    pub uploads: Vec<Upload>,
    /// How many of `uploads` are stored so far.
    pub uploaded: Arc<AtomicUsize>,
    pub uploader: tokio::task::JoinHandle<()>,
    /// Kept for the services started later (replacements, joiners) to read.
    _tansu: TansuConfig,
}

impl LoadTest {
    /// Starts `services` (name, `prism` arguments) for a new run with `extra` variables on top of
    /// the run's own, waits until the pipeline is warm, then starts `stream`.
    pub async fn start(
        extra: &[(String, String)],
        services: &[(String, Vec<&str>)],
        stream: Stream,
    ) -> Self {
        let run = run_name();
        let mut environment = run_environment(&run);
        environment.extend_from_slice(extra);
        let tansu = TansuConfig::write(&run);
        environment.push(tansu.variable());
        let settings = settings_for(&environment);
        prepare(&settings).await;
        let mut running = Services::start(&environment, &[]);
        for (name, args) in services {
            running.spawn(name, args);
        }
        let mut listener = Listener::new(observer(&settings, &run), &settings.topics);
        let buckets = Buckets::s3(&settings.s3);
        let warmup = warm_up(&buckets, &settings, &mut listener, &mut running).await;
        let uploads = stream_of_uploads("stream", stream.count, stream.copy_every);
        let uploaded = Arc::new(AtomicUsize::new(0));
        let uploader = upload_steadily(
            &buckets,
            &settings.input_bucket,
            &uploads,
            stream.pause,
            uploaded.clone(),
        );
        LoadTest {
            settings,
            services: running,
            listener,
            buckets,
            warmup,
            uploads,
            uploaded,
            uploader,
            _tansu: tansu,
        }
    }
}

/// Up to 20 (stage, upload) pairs without an outcome yet.
fn missing(seen: &Seen, uploads: &[&Upload]) -> Vec<(StageName, String)> {
    uploads
        .iter()
        .flat_map(|u| StageName::ALL.map(|stage| (stage, u.key.clone())))
        .filter(|(stage, key)| !seen.has_outcome(*stage, key))
        .take(20)
        .collect()
}

/// `count` small distinct pictures under `prefix/`, PNG and JPEG in turn; every `copy_every`th
/// upload is instead a copy of an earlier one under another key.
fn stream_of_uploads(prefix: &str, count: u32, copy_every: u32) -> Vec<Upload> {
    let mut uploads: Vec<Upload> = Vec::new();
    for n in 0..count {
        let upload = if n % copy_every == copy_every - 1 {
            let original = &uploads[(n / 2) as usize];
            Upload {
                key: format!("{prefix}/copy-{n:03}.{}", extension(&original.key)),
                ..original.clone()
            }
        } else if n % 2 == 0 {
            generated(
                &format!("{prefix}/{n:03}.png"),
                n,
                (64, 48),
                ImageFormat::Png,
            )
        } else {
            generated(
                &format!("{prefix}/{n:03}.jpg"),
                n,
                (48, 64),
                ImageFormat::Jpeg,
            )
        };
        uploads.push(upload);
    }
    uploads
}

fn extension(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or_default()
}

/// Uploads `uploads` one by one with `pause` between them, counting them in `done`.
fn upload_steadily(
    buckets: &Buckets,
    bucket: &str,
    uploads: &[Upload],
    pause: Duration,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let (buckets, bucket, uploads) = (buckets.clone(), bucket.to_string(), uploads.to_vec());
    tokio::spawn(async move {
        for upload in &uploads {
            upload_until_stored(&buckets, &bucket, upload).await;
            done.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        }
    })
}

/// The fields in which a repeated result differs from the first (timings aside: a rerun is later
/// by nature).
fn differences(first: &StageResult, other: &StageResult) -> Vec<&'static str> {
    [
        ("source", first.source != other.source),
        ("content_hash", first.content_hash != other.content_hash),
        ("fingerprint", first.fingerprint != other.fingerprint),
        ("deduplicated", first.deduplicated != other.deduplicated),
        ("outputs", first.outputs != other.outputs),
        ("payload", first.payload != other.payload),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect()
}

/// What the fault and rebalance tests demand once the pipeline has settled: every upload has a
/// result in every stage and no dead letter, repeated results say the same as the first, every
/// output exists with the size its results claim, and every claim is done. Prints the figures,
/// then fails with every broken demand.
pub async fn assert_complete(
    title: &str,
    seen: &Seen,
    uploads: &[&Upload],
    settings: &Settings,
    buckets: &Buckets,
) {
    let distinct = uploads
        .iter()
        .map(|u| *blake3::hash(&u.bytes).as_bytes())
        .collect::<BTreeSet<_>>()
        .len();
    let mut figures = vec![format!(
        "uploads: {} ({distinct} distinct contents)",
        uploads.len()
    )];
    let mut problems = Vec::new();
    if !seen.dead_letters.is_empty() {
        problems.push(format!(
            "every upload is a good image, yet dead letters came: {:?}",
            seen.dead_letters.keys().collect::<Vec<_>>()
        ));
    }
    for stage in StageName::ALL {
        let mut with_result = 0;
        let mut repeated = 0;
        let mut differing: BTreeMap<Vec<&str>, Vec<&str>> = BTreeMap::new();
        for upload in uploads {
            let Some(results) = seen.results.get(&(stage, upload.key.clone())) else {
                continue;
            };
            with_result += 1;
            repeated += results.len() - 1;
            if results[0].content_hash != blake3::hash(&upload.bytes).to_hex().to_string() {
                problems.push(format!(
                    "{stage} result for {} has another content hash",
                    upload.key
                ));
            }
            for other in &results[1..] {
                let fields = differences(&results[0], other);
                if !fields.is_empty() {
                    differing.entry(fields).or_default().push(&upload.key);
                }
            }
        }
        let keys = seen.results.keys().filter(|(of, _)| *of == stage).count();
        let differing_count: usize = differing.values().map(Vec::len).sum();
        figures.push(format!(
            "{stage}: {with_result} of {} uploads have a result; {repeated} repeated results (redelivered), {differing_count} of them differing from the first",
            uploads.len()
        ));
        if with_result != uploads.len() {
            problems.push(format!(
                "{stage}: only {with_result} of {} uploads have a result",
                uploads.len()
            ));
        }
        if keys != with_result {
            problems.push(format!(
                "{stage}: {} results for keys nobody uploaded",
                keys - with_result
            ));
        }
        for (fields, keys) in differing {
            problems.push(format!(
                "{stage}: {} repeated results differ from the first in {fields:?}, e.g. for {:?}",
                keys.len(),
                &keys[..keys.len().min(5)]
            ));
        }
    }

    // Every output of every result exists, with the size the results claim.
    let mut outputs: BTreeMap<(&str, &str), BTreeSet<u64>> = BTreeMap::new();
    for output in seen.results.values().flatten().flat_map(|r| &r.outputs) {
        outputs
            .entry((&output.bucket, &output.key))
            .or_default()
            .insert(output.bytes);
    }
    let mut absent = 0;
    for ((bucket, key), sizes) in &outputs {
        match buckets.read(bucket, key, u64::MAX).await {
            Ok((stored, _)) if sizes.len() == 1 && sizes.contains(&(stored.len() as u64)) => {}
            Ok((stored, _)) => problems.push(format!(
                "{key} has {} bytes; its results claim {sizes:?}",
                stored.len()
            )),
            Err(error) => {
                absent += 1;
                problems.push(format!("output {key} is missing: {error}"));
            }
        }
    }
    figures.push(format!(
        "outputs: {} referenced by results, {absent} missing",
        outputs.len()
    ));

    // CouchDB: one finished claim per content and stage, none left in flight.
    let index = CouchIndex::connect(&settings.couchdb).await.unwrap();
    let processing = index.with_status(ClaimStatus::Processing).await.unwrap();
    let done = index.with_status(ClaimStatus::Done).await.unwrap();
    let rerun = done.iter().filter(|c| c.attempts > 1).count();
    figures.push(format!(
        "claims: {} done ({rerun} of them started more than once), {} processing",
        done.len(),
        processing.len()
    ));
    if !processing.is_empty() {
        let ids: Vec<&str> = processing.iter().map(|c| c.id.as_str()).collect();
        problems.push(format!("claims left processing: {ids:?}"));
    }
    if done.len() != distinct * StageName::ALL.len() {
        problems.push(format!(
            "{} done claims for {distinct} contents in {} stages",
            done.len(),
            StageName::ALL.len()
        ));
    }

    println!("--- {title} ---");
    for line in figures {
        println!("{line}");
    }
    assert!(problems.is_empty(), "{title}:\n{}", problems.join("\n"));
}
