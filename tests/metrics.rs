//! The services' `/metrics`, `/healthz` and `/readyz` (dedup, every stage, the watcher), scraped by a real Prometheus (Debian's
//! package, installed by deploy/local/install.sh) while real uploads go through the pipeline: the
//! counters Prometheus holds must match what the test saw on the topics, and every query of the
//! Grafana dashboard (deploy/grafana/prism-dashboard.json) must find the series it charts.

use image::ImageFormat;
use prism_core::contract::StageName;
use prism_core::ports::store::Buckets;
use prism_e2e::{
    DEADLINE, Listener, Services, Upload, free_port, generated, observer, prepare, run_environment,
    run_name, settings_for, upload_until_stored,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Prometheus server scraping `targets` every half second, stopped on drop.
struct Prometheus {
    child: Child,
    address: String,
}

impl Prometheus {
    /// The sum of an instant query's samples (0 without any).
    async fn sum(&self, query: &str) -> f64 {
        self.query(query).await.iter().map(|(_, value)| value).sum()
    }

    fn start(dir: &Path, targets: &[String]) -> Self {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  \
                 - job_name: prism\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus is not installed: run deploy/local/install.sh");
        Prometheus { child, address }
    }

    /// An instant query's samples, as (labels, value).
    async fn query(&self, query: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let url = format!("http://{}/api/v1/query", self.address);
        let Ok(response) = reqwest::Client::new()
            .get(&url)
            .query(&[("query", query)])
            .send()
            .await
        else {
            return Vec::new(); // not up yet
        };
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{query}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| {
                let labels = serde_json::from_value(sample["metric"].clone()).unwrap();
                let value = sample["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }
}

/// Per stage, as Prometheus has them: fresh results, copies, dead letters.
async fn counted(prometheus: &Prometheus) -> BTreeMap<&'static str, (f64, f64, f64)> {
    let mut counted = BTreeMap::new();
    for stage in StageName::ALL.map(StageName::as_str) {
        let results = |deduplicated: bool| {
            format!("prism_results_total{{stage=\"{stage}\",deduplicated=\"{deduplicated}\"}}")
        };
        let fresh = prometheus.sum(&results(false)).await;
        let copies = prometheus.sum(&results(true)).await;
        let dead = prometheus
            .sum(&format!("prism_dead_letters_total{{service=\"{stage}\"}}"))
            .await;
        counted.insert(stage, (fresh, copies, dead));
    }
    counted
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Grafana dashboard's queries as (panel title, PromQL), with Grafana's rate window given the
/// length of a whole test run.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/prism-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                expr.replace("$__rate_interval", "5m"),
            ));
        }
    }
    assert!(!queries.is_empty(), "no queries in {}", path.display());
    queries
}

/// Dashboard panels that chart what this run never causes: no server goes away (retries) and no
/// two writers race for a claim (conflicts).
const PANELS_QUIET_HERE: [&str; 2] = ["Retries per second", "Claim conflicts per second"];

/// GETs `url`; the status and body, or `None` while nothing listens.
async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_what_the_pipeline_did() {
    let run = run_name();
    let environment = run_environment(&run);
    let settings = settings_for(&environment);
    prepare(&settings).await;

    let services_and_ports: Vec<(&str, Vec<&str>, u16)> = [
        ("dedup", vec!["serve", "dedup"]),
        ("thumbnail", vec!["serve", "thumbnail"]),
        ("detect", vec!["serve", "detect"]),
        ("classify", vec!["serve", "classify"]),
        ("watch", vec!["watch", "--interval-ms", "200"]),
    ]
    .into_iter()
    .map(|(name, args)| (name, args, free_port()))
    .collect();
    let mut services = Services::start(&environment, &[]);
    for (name, args, port) in &services_and_ports {
        let listen = ("PRISM_OBSERVE__LISTEN".into(), format!("127.0.0.1:{port}"));
        services.spawn_with(name, args, &[listen]);
    }
    let targets: Vec<String> = services_and_ports
        .iter()
        .map(|(_, _, port)| format!("127.0.0.1:{port}"))
        .collect();
    let prometheus = Prometheus::start(services.logs_dir(), &targets);

    // Alive at once; ready once connected (and, consuming services, in their group).
    let started = Instant::now();
    for target in &targets {
        loop {
            services.assert_running();
            let health = get(&format!("http://{target}/healthz")).await;
            let ready = get(&format!("http://{target}/readyz")).await;
            if let (Some((200, _)), Some((200, body))) = (&health, &ready) {
                assert!(body.starts_with("ready"), "{target}: {body}");
                break;
            }
            if let Some((status, body)) = &ready {
                assert!(
                    *status == 503 && body.starts_with("not ready"),
                    "{target}: {status} {body}"
                );
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{target} not ready after {DEADLINE:?}: /healthz {health:?}, /readyz {ready:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Good pictures, a copy of one, and two files that are not images.
    let mut uploads: Vec<Upload> = (0..5)
        .map(|n| {
            generated(
                &format!("m/{n}.jpg"),
                300 + n,
                (320, 240),
                ImageFormat::Jpeg,
            )
        })
        .collect();
    uploads.push(Upload {
        key: "m/copy.jpg".into(),
        ..uploads[0].clone()
    });
    for n in 0..2 {
        uploads.push(Upload {
            key: format!("m/broken-{n}.png"),
            bytes: format!("not a png {n}").repeat(50).into_bytes().into(),
            size: None,
        });
    }
    let buckets = Buckets::s3(&settings.s3);
    for upload in &uploads {
        upload_until_stored(&buckets, &settings.input_bucket, upload).await;
    }
    let mut listener = Listener::new(observer(&settings, &run), &settings.topics);
    listener
        .wait_for_all(&uploads.iter().collect::<Vec<_>>(), &mut services)
        .await;

    // What the topics said, per stage: results (fresh, copies) and dead letters.
    let seen = &listener.seen;
    let mut expected = BTreeMap::new();
    for stage in StageName::ALL {
        let results = seen.results.iter().filter(|((s, _), _)| *s == stage);
        let copies = results
            .clone()
            .filter(|(_, results)| results[0].deduplicated)
            .count();
        let fresh = results.count() - copies;
        let dead = seen
            .dead_letters
            .keys()
            .filter(|(s, _)| *s == stage)
            .count();
        expected.insert(stage.as_str(), (fresh as f64, copies as f64, dead as f64));
    }
    assert_eq!(
        expected["thumbnail"],
        (5.0, 1.0, 2.0),
        "the topics: every good upload has a result, the copy deduplicated, the broken files dead letters"
    );

    // Prometheus must come to the same counts (it scrapes every half second).
    let started = Instant::now();
    loop {
        let counted = counted(&prometheus).await;
        if counted == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Prometheus counted (fresh results, copies, dead letters) {counted:?}, the topics said {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The rest of the table is there too, with values that fit.
    let messages = prometheus
        .sum("prism_messages_total{service=\"dedup\"}")
        .await;
    assert!(
        messages >= uploads.len() as f64,
        "dedup finished {messages} messages"
    );
    let processed = prometheus
        .sum("prism_processing_seconds_count{stage=\"detect\"}")
        .await;
    assert_eq!(processed, expected["detect"].0, "detect's processing times");
    let latency = prometheus
        .query("histogram_quantile(0.5, sum by (le) (prism_latency_seconds_bucket{stage=\"thumbnail\"}))")
        .await;
    assert!(
        latency.len() == 1 && latency[0].1 > 0.0 && latency[0].1 < 60.0,
        "median upload-to-thumbnail latency: {latency:?}"
    );
    let announced = prometheus.sum("prism_announced_total{by=\"watch\"}").await;
    assert_eq!(
        announced,
        uploads.len() as f64,
        "the watcher's announcements"
    );
    let lag = prometheus
        .query("prism_consumer_lag{topic=~\".*jobs.detect\"}")
        .await;
    assert!(!lag.is_empty(), "detect's partitions have a lag gauge");
    let batches = prometheus
        .sum("prism_batch_size_sum{service=\"detect\"}")
        .await;
    assert!(
        batches >= expected["detect"].0,
        "detect's batches held {batches} jobs"
    );

    // The dashboard charts series that exist: each of its queries that this run gives data returns
    // at least one (a misspelt metric or label matcher returns none), and every query parses.
    let queries = dashboard_queries();
    for quiet in PANELS_QUIET_HERE {
        assert!(
            queries.iter().any(|(title, _)| title == quiet),
            "no dashboard panel titled {quiet:?}"
        );
    }
    for (title, expr) in &queries {
        let series = prometheus.query(expr).await;
        assert!(
            !series.is_empty() || PANELS_QUIET_HERE.contains(&title.as_str()),
            "dashboard panel {title:?}: no series for {expr}"
        );
    }
}
