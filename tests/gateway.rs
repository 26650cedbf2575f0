//! The gateway over the real servers: `prism serve gateway` next to dedup, thumbnail, detect and classify,
//! driven over HTTP as the page, the seed's /predict clients and an operator would.
//!
//! Uses the shared servers (`deploy/local/servers.sh start`), like the end-to-end test.

use bytes::Bytes;
use futures::future::join_all;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use prism_core::contract::StageName;
use prism_core::ports::store::Buckets;
use prism_e2e::{
    DEADLINE, Gateway, Services, Upload, free_port, generated, prepare, prism_binary,
    run_environment, run_name, settings_for, upload_until_stored,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The byte limit the gateway is started with: above bus.jpg, small enough to send past.
const MAX_UPLOAD_BYTES: usize = 2_000_000;
/// How long the gateway lets a client pause mid-body.
const BODY_IDLE_MS: u64 = 1_500;

fn encoded(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

fn bus_jpg() -> Bytes {
    let path = prism_detect::model::prism_home().join("images/bus.jpg");
    Bytes::from(
        std::fs::read(path)
            .expect("bus.jpg is missing from $PRISM_HOME/images: run deploy/local/fetch-assets.sh"),
    )
}

/// An answer's status and JSON body (panics, with the body, when it is not JSON).
async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    (status, body)
}

/// GET `url`, its status and JSON body.
async fn get_json(http: &reqwest::Client, url: String) -> (StatusCode, Value) {
    json_of(http.get(url).send().await.unwrap()).await
}

async fn predict_body(
    http: &reqwest::Client,
    gateway: &Gateway,
    name: &str,
    body: Bytes,
) -> (StatusCode, Value) {
    let url = format!(
        "{}/predict?timeout=150s&name={}",
        gateway.url,
        encoded(name)
    );
    json_of(http.post(url).body(body).send().await.unwrap()).await
}

async fn predict_key(
    http: &reqwest::Client,
    gateway: &Gateway,
    request: &str,
) -> (StatusCode, Value) {
    json_of(
        http.post(format!("{}/predict?timeout=150s", gateway.url))
            .header("content-type", "application/json")
            .body(request.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn classes(prediction: &Value) -> Vec<String> {
    let mut classes: Vec<String> = prediction["detections"]
        .as_array()
        .unwrap_or_else(|| panic!("no detections: {prediction}"))
        .iter()
        .map(|d| d["class"].as_str().unwrap().to_string())
        .collect();
    classes.sort();
    classes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_predict_uploads_results_and_admin_over_the_real_servers() {
    let run = run_name();
    let environment = run_environment(&run);
    let settings = settings_for(&environment);
    prepare(&settings).await;
    let mut services = Services::start(
        &environment,
        &[
            &["serve", "dedup"],
            &["serve", "thumbnail"],
            &["serve", "detect"],
            &["serve", "classify"],
        ],
    );
    let max_bytes = MAX_UPLOAD_BYTES.to_string();
    let idle = BODY_IDLE_MS.to_string();
    let gateway_settings = [
        ("PRISM_GATEWAY__MAX_UPLOAD_BYTES", max_bytes.as_str()),
        ("PRISM_GATEWAY__BODY_IDLE_TIMEOUT", idle.as_str()),
    ];
    let gateway = services.start_gateway(&gateway_settings);
    let http = reqwest::Client::new();
    let bus = bus_jpg();

    // /predict by body: the whole pipeline, then detect's result and the annotated image.
    let (status, first) = predict_body(&http, &gateway, "bus.jpg", bus.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        classes(&first),
        ["bus", "person", "person", "person", "person"]
    );
    assert_eq!(first["deduplicated"], false);
    let annotated = first["annotated_url"].as_str().expect("an annotated image");
    let image = http
        .get(format!("{}{annotated}", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), StatusCode::OK);
    assert_eq!(image.headers()["content-type"], "image/jpeg");
    let jpeg = image.bytes().await.unwrap();
    assert_eq!(&jpeg[..2], b"\xFF\xD8", "a JPEG");

    // The same content again: dedup answers at once.
    let started = Instant::now();
    let (status, repeat) = predict_body(&http, &gateway, "copy of bus.jpg", bus.clone()).await;
    let repeat_took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{repeat}");
    assert_eq!(repeat["deduplicated"], true);
    assert_eq!(repeat["content_hash"], first["content_hash"]);
    assert_eq!(classes(&repeat), classes(&first));
    assert!(
        repeat_took < Duration::from_secs(3),
        "a repeat took {repeat_took:?}"
    );

    // By key, for an object already in the input bucket, its key in unicode.
    let buckets = Buckets::s3(&settings.s3);
    let unicode_key = "été/北京 ..bus.jpg";
    let stored = Upload {
        key: unicode_key.into(),
        bytes: bus.clone(),
        size: Some((810, 1080)),
    };
    upload_until_stored(&buckets, &settings.input_bucket, &stored).await;
    let request = json!({ "bucket": settings.input_bucket, "key": unicode_key }).to_string();
    let (status, by_key) = predict_key(&http, &gateway, &request).await;
    assert_eq!(status, StatusCode::OK, "{by_key}");
    assert_eq!(by_key["source"]["key"], unicode_key);
    assert_eq!(by_key["content_hash"], first["content_hash"]);

    // Bad input is the client's: 400, 404, 413, 422, never a 500.
    let traversal = json!({ "bucket": settings.input_bucket, "key": "../etc/passwd" }).to_string();
    let (status, body) = predict_key(&http, &gateway, &traversal).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let missing =
        json!({ "bucket": settings.input_bucket, "key": "nobody/uploaded.jpg" }).to_string();
    let (status, body) = predict_key(&http, &gateway, &missing).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = predict_key(&http, &gateway, "{\"bucket\": ").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_json"))
    );
    let (status, _) = json_of(
        http.post(format!("{}/predict?timeout=soon", gateway.url))
            .body(bus.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Refused from its declared length, before the body is read (a raw socket: an HTTP client
    // still sending the rest could see the connection reset before it reads the answer).
    let too_big = format!(
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        MAX_UPLOAD_BYTES + 1
    );
    let answer = raw_exchange(&gateway, too_big, 1000).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut corrupt = b"\xFF\xD8\xFF\xE0 this is not really a JPEG".to_vec();
    corrupt.extend(std::iter::repeat_n(0x5A, 4000));
    let (status, letter) = predict_body(&http, &gateway, "broken.jpg", Bytes::from(corrupt)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{letter}");
    assert_eq!(letter["stage"], "detect");
    assert!(!letter["reason"].as_str().unwrap().is_empty(), "{letter}");

    // The page: its live stream, an upload, every stage's result on the stream, then read back.
    let session = format!("s{run}");
    let mut stream = http
        .get(format!("{}/api/sessions/{session}/events", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let photo = generated("unused", 71, (640, 480), image::ImageFormat::Jpeg);
    let (status, uploaded) = json_of(
        http.post(format!(
            "{}/api/uploads?name={}&session={session}",
            gateway.url,
            encoded("../my photo ü.jpg")
        ))
        .header("content-type", "image/jpeg")
        .body(photo.bytes.clone())
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let key = uploaded["key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with(&format!("web/{session}/")) && key.ends_with("/my photo ü.jpg"),
        "{key}"
    );
    assert_eq!(uploaded["size"], photo.bytes.len());
    let mut text = String::new();
    let deadline = Instant::now() + DEADLINE;
    while StageName::ALL
        .iter()
        .any(|stage| !text.contains(&format!("\"stage\":\"{stage}\"")))
    {
        services.assert_running();
        let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no results on the live stream within {DEADLINE:?}: {text}"))
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: result"), "{text}");
    assert!(
        text.contains(&serde_json::to_string(&key).unwrap()),
        "{text}"
    );
    let upload_url = uploaded["url"].as_str().unwrap();
    let (status, view) = get_json(&http, format!("{}{upload_url}", gateway.url)).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["key"], key.as_str());
    for stage in StageName::ALL {
        let outputs = view["results"][stage.as_str()]["outputs"]
            .as_array()
            .unwrap_or_else(|| panic!("{view}"));
        for output in outputs {
            let url = output["url"].as_str().unwrap();
            let served = http
                .get(format!("{}{url}", gateway.url))
                .send()
                .await
                .unwrap();
            assert_eq!(served.status(), StatusCode::OK, "{url}");
        }
    }
    let hash = view["content_hash"].as_str().unwrap();
    assert_eq!(uploaded["content_hash"], hash);
    let (status, content) = get_json(&http, format!("{}/api/results/{hash}", gateway.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content["results"].as_object().unwrap().len(),
        StageName::ALL.len(),
        "{content}"
    );
    let (status, _) = get_json(
        &http,
        format!(
            "{}/api/uploads/{}/no/such.jpg",
            gateway.url, settings.input_bucket
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(
        &http,
        format!("{}/api/objects/some-other-bucket/x.jpg", gateway.url),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "only Prism's buckets are served"
    );
    for bad in ["", "../x", "a%2Fb"] {
        let status = http
            .post(format!(
                "{}/api/uploads?name=a.jpg&session={bad}",
                gateway.url
            ))
            .body("x")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::BAD_REQUEST, "session {bad:?}");
    }

    // The admin API: 401 without the token, the numbers with it.
    let refused = http
        .get(format!("{}/api/admin/stats", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().contains_key("www-authenticate"));
    let wrong = http
        .get(format!("{}/api/admin/stats", gateway.url))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let (status, stats) = json_of(
        http.get(format!("{}/api/admin/stats", gateway.url))
            .bearer_auth(&gateway.admin_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let detect = &stats["stages"]["detect"];
    assert!(
        detect["results_since_start"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    assert!(
        detect["deduplicated_share"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert!(
        detect["dead_letters_by_code"]
            .as_object()
            .unwrap()
            .values()
            .any(|n| n.as_u64() >= Some(1)),
        "{stats}"
    );
    assert!(detect["latency_ms"]["p50"].as_u64().is_some(), "{stats}");
    // Lag per partition from Kafka's offsets. Members: Tansu 0.6 does not describe groups to
    // librdkafka's group listing (services/gateway/API.md), so they may be missing, with why.
    let groups = stats["consumer_groups"]
        .as_array()
        .expect("consumer groups");
    assert_eq!(
        groups.len(),
        8,
        "dedup, thumbnail, detect, classify, each in both lanes: {stats}"
    );
    for group in groups {
        assert_eq!(group["partitions"].as_array().unwrap().len(), 12, "{group}");
        match group["members"].as_array() {
            Some(members) => assert_eq!(members.len(), 1, "one replica each: {group}"),
            None => assert!(
                group["error"].as_str().unwrap().contains("describe"),
                "{group}"
            ),
        }
    }

    // A client that stops sending mid-body is answered 408 and cut off, not waited on.
    let stalled = "POST /api/uploads?name=slow.jpg&session=slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
    let slow = raw_exchange(&gateway, stalled.to_string(), 1000).await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");

    // 50 requests at once, 10 distinct contents: every one answered, memory bounded.
    let images: Vec<Bytes> = (0..10)
        .map(|n| generated("unused", 200 + n, (480, 360), image::ImageFormat::Jpeg).bytes)
        .collect();
    let requests = (0..50).map(|n| {
        let (http, gateway, image) = (&http, &gateway, images[n % 10].clone());
        async move { predict_body(http, gateway, &format!("load {n}.jpg"), image).await }
    });
    let answers = join_all(requests).await;
    for (n, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "request {n}: {body}");
    }
    let distinct: std::collections::HashSet<&str> = answers
        .iter()
        .map(|(_, body)| body["content_hash"].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), 10);
    let peak = peak_rss_mib(services.pid("gateway"));
    assert!(peak < 200, "the gateway peaked at {peak} MiB");

    // Results outlive the gateway: a new one reads them back from the claims.
    services.stop("gateway");
    let gateway = services.start_gateway(&gateway_settings);
    let (status, again) = get_json(&http, format!("{}{upload_url}", gateway.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["results"], view["results"],
        "read back after a restart"
    );
    let unicode_url = format!(
        "{}/api/uploads/{}/{}",
        gateway.url,
        settings.input_bucket,
        unicode_key
            .split('/')
            .map(encoded)
            .collect::<Vec<_>>()
            .join("/")
    );
    let (status, unicode) = get_json(&http, unicode_url).await;
    assert_eq!(status, StatusCode::OK, "{unicode}");
    assert_eq!(
        unicode["results"]["detect"]["deduplicated"], true,
        "{unicode}"
    );
}

/// `prism run --web`: the same pages over the in-memory bus and folders, no servers needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_mode_serves_the_same_pages_over_folders() {
    let scratch = std::env::temp_dir().join(format!("prism-web-{}", run_name()));
    let input = scratch.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("bus.jpg"), bus_jpg()).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(prism_binary())
        .arg("run")
        .arg(&input)
        .arg("--out")
        .arg(scratch.join("out"))
        .args(["--web", "--listen", &address])
        .env("PRISM_GATEWAY__ADMIN_TOKEN", "embedded-token")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its own word that it serves (after the folder's summary), not just a connection.
    let stdout = child.stdout.take().unwrap();
    let serving = format!("serving http://{address}/");
    let printed = tokio::task::spawn_blocking(move || {
        let mut printed = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let line = line.unwrap();
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with(&serving) {
                break;
            }
        }
        printed
    });
    let printed = tokio::time::timeout(DEADLINE, printed)
        .await
        .expect("prism run --web never served")
        .unwrap();
    assert!(
        printed.contains("5 objects detected"),
        "the folder's summary first: {printed}"
    );
    let deadline = Instant::now() + DEADLINE;
    let url = format!("http://{address}");
    let http = reqwest::Client::new();
    let page = http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let mut stream = http
        .get(format!("{url}/api/sessions/embedded/events"))
        .send()
        .await
        .unwrap();
    let (status, uploaded) = json_of(
        http.post(format!("{url}/api/uploads?name=copy.jpg&session=embedded"))
            .body(bus_jpg())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let mut text = String::new();
    while !text.contains("\"stage\":\"detect\"") {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no detect result on the live stream: {text}"))
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The folder's own bus.jpg came first: the upload of the same bytes is a copy.
    assert!(text.contains("\"deduplicated\":true"), "{text}");
    let bucket = uploaded["bucket"].as_str().unwrap();
    let (status, view) = get_json(&http, format!("{url}/api/uploads/{bucket}/bus.jpg")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        classes(&view["results"]["detect"]),
        ["bus", "person", "person", "person", "person"]
    );
    let (status, stats) = json_of(
        http.get(format!("{url}/api/admin/stats"))
            .bearer_auth("embedded-token")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["consumer_groups"].is_null(), "no Kafka here: {stats}");
    assert!(
        stats["stages"]["detect"]["results_since_start"].as_u64() >= Some(2),
        "{stats}"
    );

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "prism run --web ended with {exit}");
    assert!(
        scratch.join("out/.prism/claims.json").is_file(),
        "the claim index is saved at the end"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Sends `head` and `sent` bytes of the body it announces, then stalls; returns what the
/// gateway answers, and checks it closed the connection soon after.
async fn raw_exchange(gateway: &Gateway, head: String, sent: usize) -> String {
    let address = gateway.url.trim_start_matches("http://").to_string();
    tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(BODY_IDLE_MS * 4)))
            .unwrap();
        socket.write_all(head.as_bytes()).unwrap();
        socket.write_all(&vec![0xFF; sent]).unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        // Read to the end: the gateway must close the connection, not leave it hanging.
        let read = socket.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            read.is_ok(),
            "the gateway neither answered nor closed ({read:?}): {answer}"
        );
        assert!(started.elapsed() < Duration::from_millis(BODY_IDLE_MS * 3));
        answer
    })
    .await
    .unwrap()
}

/// The highest resident memory a process has had, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}
