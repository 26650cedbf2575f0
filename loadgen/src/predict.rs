//! `prism-loadgen predict`: the seed's JMeter plan against the gateway's `POST /predict`.
//!
//! A run is `batches` batches, one after another, of `clients` requests sent at once (9 x 4 in the
//! seed's plan); request `n` of a run sends image `n % distinct`. The first batch of the first run
//! is the cold one when the gateway (and the stages behind it) started just before. The same
//! requests are then sent again, every image now seen before, so the second run measures
//! deduplicated answers.
//!
//! The images are made distinct for each invocation: every one gets a JPEG comment segment naming
//! this invocation and its index, which changes its content hash but not its pixels. So the first
//! run is new content even on a pipeline that processed these photos before, and fewer source
//! photos than `distinct` still give that many distinct images.

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::future::join_all;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How each request names its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Send {
    /// The image bytes as the request body.
    Body,
    /// JSON `{"bucket", "key"}` for the image, uploaded to the input bucket first (the seed's way).
    Key,
}

pub struct PredictOptions {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// JPEG photos to make the distinct images from.
    pub photos: Vec<PathBuf>,
    pub clients: usize,
    pub batches: usize,
    pub distinct: usize,
    /// The `?timeout=` each request asks the gateway for: long, so a slow cold start is measured
    /// rather than cut short (a 504 counts as an error).
    pub request_timeout: Duration,
    /// How long to wait for the gateway to answer at all before the first batch.
    pub wait_ready: Duration,
}

/// Where the images were put when they are sent by key.
pub struct Uploaded {
    pub bucket: String,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub image: usize,
    pub seconds: f64,
    pub status: u16,
    /// The answer's `deduplicated`, when it was a 200.
    pub deduplicated: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    /// In the order the requests were sent.
    pub samples: Vec<Sample>,
}

impl Batch {
    fn ok_seconds(&self) -> Vec<f64> {
        let mut times: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.seconds)
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }

    pub fn mean(&self) -> Option<f64> {
        let times = self.ok_seconds();
        (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64)
    }

    pub fn p95(&self) -> Option<f64> {
        let times = self.ok_seconds();
        (!times.is_empty()).then(|| percentile(&times, 0.95))
    }

    pub fn errors(&self) -> usize {
        self.samples.iter().filter(|s| s.status != 200).count()
    }

    pub fn seen_before(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.deduplicated == Some(true))
            .count()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub name: String,
    pub batches: Vec<Batch>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub gateway: String,
    pub clients: usize,
    pub distinct: usize,
    pub send: String,
    pub photos: usize,
    pub image_bytes_mean: u64,
    pub date: String,
    pub runs: Vec<Run>,
}

/// The `q` quantile of sorted `values` (nearest rank: the p95 of 9 answers is the slowest).
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// `jpeg` with a comment segment (`FF FE`, length, text) right after its start-of-image marker.
pub fn with_comment(jpeg: &[u8], comment: &str) -> anyhow::Result<Bytes> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        bail!("not a JPEG (no start-of-image marker)");
    }
    let length = u16::try_from(comment.len() + 2).context("comment too long")?;
    let mut marked = Vec::with_capacity(jpeg.len() + comment.len() + 4);
    marked.extend_from_slice(&jpeg[..2]);
    marked.extend_from_slice(&[0xFF, 0xFE]);
    marked.extend_from_slice(&length.to_be_bytes());
    marked.extend_from_slice(comment.as_bytes());
    marked.extend_from_slice(&jpeg[2..]);
    Ok(Bytes::from(marked))
}

/// `distinct` images from `photos` (cycled), each marked with `invocation` and its index.
pub fn distinct_images(
    photos: &[PathBuf],
    distinct: usize,
    invocation: &str,
) -> anyhow::Result<Vec<(String, Bytes)>> {
    if photos.is_empty() {
        bail!("no JPEG photos to send");
    }
    let originals = photos
        .iter()
        .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    (0..distinct)
        .map(|n| {
            let at = n % photos.len();
            let name = photos[at].file_name().map_or_else(
                || "image.jpg".into(),
                |name| name.to_string_lossy().into_owned(),
            );
            let marked = with_comment(
                &originals[at],
                &format!("prism-loadgen predict {invocation} {n}"),
            )
            .with_context(|| photos[at].display().to_string())?;
            Ok((format!("{n:02}-{name}"), marked))
        })
        .collect()
}

/// Both runs against the gateway; `uploaded` set means send by key, else by body.
pub async fn run(
    options: &PredictOptions,
    images: &[(String, Bytes)],
    uploaded: Option<&Uploaded>,
) -> anyhow::Result<Vec<Run>> {
    let client = reqwest::Client::builder()
        .timeout(options.request_timeout + Duration::from_secs(30))
        .build()?;
    let gateway = options.gateway.trim_end_matches('/');
    wait_until_ready(&client, gateway, options.wait_ready).await?;
    let mut runs = Vec::new();
    for name in ["new content (batch 1 cold)", "every image seen before"] {
        let mut batches = Vec::new();
        for batch in 0..options.batches {
            let requests = (0..options.clients).map(|client_index| {
                let image = (batch * options.clients + client_index) % images.len();
                predict(&client, gateway, options, images, uploaded, image)
            });
            let samples = join_all(requests).await;
            batches.push(Batch { samples });
        }
        runs.push(Run {
            name: name.into(),
            batches,
        });
    }
    Ok(runs)
}

async fn wait_until_ready(
    client: &reqwest::Client,
    gateway: &str,
    patience: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match client.get(format!("{gateway}/healthz")).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            _ if started.elapsed() < patience => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(response) => bail!("{gateway} answers {}", response.status()),
            Err(error) => bail!("{gateway} does not answer: {error}"),
        }
    }
}

async fn predict(
    client: &reqwest::Client,
    gateway: &str,
    options: &PredictOptions,
    images: &[(String, Bytes)],
    uploaded: Option<&Uploaded>,
    image: usize,
) -> Sample {
    let url = format!(
        "{gateway}/predict?timeout={}s",
        options.request_timeout.as_secs()
    );
    let request = match uploaded {
        Some(uploaded) => client.post(url).json(&serde_json::json!({
            "bucket": uploaded.bucket,
            "key": uploaded.keys[image],
        })),
        None => client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "image/jpeg")
            .body(images[image].1.clone()),
    };
    let started = Instant::now();
    let answer = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Option<serde_json::Value> = response.json().await.ok();
            (status, body)
        }
        Err(error) => {
            tracing::warn!(%error, image, "request failed");
            (0, None)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let (status, body) = answer;
    Sample {
        image,
        seconds,
        status,
        deduplicated: body
            .filter(|_| status == 200)
            .and_then(|body| body.get("deduplicated")?.as_bool()),
    }
}

fn figure(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// Per batch: requests, how many were answered as seen before, mean and p95 in seconds; then the
/// response-time series in send order.
pub fn render_text(report: &Report) -> String {
    let mut text = format!(
        "{} concurrent clients x {} batches over {} distinct images ({} photos, mean {:.0} KiB, sent by {}) \
         against {}, {}\n",
        report.clients,
        report.runs.first().map_or(0, |run| run.batches.len()),
        report.distinct,
        report.photos,
        report.image_bytes_mean as f64 / 1024.0,
        report.send,
        report.gateway,
        report.date,
    );
    for run in &report.runs {
        text.push_str(&format!(
            "\n{}\n{:<6} {:>8} {:>11} {:>6} {:>7} {:>7}\n",
            run.name, "batch", "requests", "seen before", "errors", "mean s", "p95 s"
        ));
        for (n, batch) in run.batches.iter().enumerate() {
            text.push_str(&format!(
                "{:<6} {:>8} {:>11} {:>6} {:>7} {:>7}\n",
                n + 1,
                batch.samples.len(),
                batch.seen_before(),
                batch.errors(),
                figure(batch.mean()),
                figure(batch.p95()),
            ));
        }
        text.push_str("response times (s, in send order; * not a 200):\n");
        for (n, batch) in run.batches.iter().enumerate() {
            let series: Vec<String> = batch
                .samples
                .iter()
                .map(|s| {
                    let mark = if s.status == 200 { "" } else { "*" };
                    format!("{:.2}{mark}", s.seconds)
                })
                .collect();
            text.push_str(&format!("  batch {}: {}\n", n + 1, series.join(" ")));
        }
    }
    text
}

/// The same figures as a Markdown table, for the README.
pub fn render_markdown(report: &Report) -> String {
    let mut text = String::from(
        "| run | batch | requests | seen before | errors | mean s | p95 s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for run in &report.runs {
        for (n, batch) in run.batches.iter().enumerate() {
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                run.name,
                n + 1,
                batch.samples.len(),
                batch.seen_before(),
                batch.errors(),
                figure(batch.mean()),
                figure(batch.p95()),
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, status: u16, deduplicated: Option<bool>) -> Sample {
        Sample {
            image: 0,
            seconds,
            status,
            deduplicated,
        }
    }

    #[test]
    fn a_comment_changes_the_bytes_but_not_the_pixels() {
        let mut jpeg = Vec::new();
        image::RgbImage::from_fn(16, 8, |x, y| image::Rgb([x as u8 * 15, y as u8 * 30, 90]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let first = with_comment(&jpeg, "run a 0").unwrap();
        let second = with_comment(&jpeg, "run a 1").unwrap();
        assert_ne!(first, second);
        let decode = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8();
        assert_eq!(decode(&first), decode(&jpeg));
        assert_eq!(decode(&second), decode(&jpeg));
        assert!(with_comment(b"GIF89a", "x").is_err());
    }

    #[test]
    fn batch_figures_count_only_answered_requests() {
        let batch = Batch {
            samples: vec![
                sample(1.0, 200, Some(false)),
                sample(3.0, 200, Some(true)),
                sample(2.0, 200, Some(true)),
                sample(30.0, 504, None),
            ],
        };
        assert_eq!(batch.mean(), Some(2.0));
        assert_eq!(batch.p95(), Some(3.0));
        assert_eq!(batch.errors(), 1);
        assert_eq!(batch.seen_before(), 2);
        let failed = Batch {
            samples: vec![sample(1.0, 0, None)],
        };
        assert_eq!(failed.mean(), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let nine: Vec<f64> = (1..=9).map(f64::from).collect();
        assert_eq!(percentile(&nine, 0.95), 9.0);
        assert_eq!(percentile(&nine, 0.5), 5.0);
        assert_eq!(percentile(&[4.0], 0.95), 4.0);
    }
}
