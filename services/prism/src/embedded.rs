//! The embedded mode: the whole pipeline in one process, over a folder, with no servers.
//!
//! The same processors and consumer loop as the services, over in-process adapters: a memory bus,
//! folders as buckets, an in-memory claim index saved beside the outputs (so a second run over the
//! same images finds them already processed).

use prism_announce::watch::Watcher;
use prism_core::contract::{DeadLetter, SourceObject, StageName, StageResult};
use prism_core::ports::bus::Subscriber;
use prism_core::ports::bus::memory::MemoryBus;
use prism_core::ports::claims::memory::MemoryIndex;
use prism_core::ports::store::Buckets;
use prism_core::runtime::backends::Backends;
use prism_core::runtime::config::{Intake, Settings};
use prism_core::runtime::consumer::{ConsumerLoop, Processor, Stats};
use prism_core::runtime::worker::StageWorker;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The claim index is kept here, under the output folder.
const INDEX_FILE: &str = ".prism/claims.json";
/// How many uploads' likeliest class the summary lists; the rest are in results.jsonl.
const CLASSES_LISTED: usize = 20;

/// Processes `input`, prints the summary, and with `web` (an address) then serves the gateway's
/// pages over the same bus and folders until `shutdown`.
pub async fn run(
    mut settings: Settings,
    input: &Path,
    output: &Path,
    stages: &[StageName],
    web: Option<&str>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        input.is_dir(),
        "{} is not a folder of images",
        input.display()
    );
    std::fs::create_dir_all(output)?;
    let started = Instant::now();
    settings.enabled_stages = stages.to_vec();
    let buckets = Buckets::folders(HashMap::from([
        (settings.input_bucket.clone(), input.to_path_buf()),
        (settings.output_bucket.clone(), output.to_path_buf()),
    ]));
    let index_path = output.join(INDEX_FILE);
    let index = Arc::new(MemoryIndex::load(&index_path)?);
    let bus = MemoryBus::default();
    let backends = Backends {
        publisher: Arc::new(bus.clone()),
        buckets: buckets.clone(),
        index: index.clone(),
        // `prism run` has no batch jobs: it is one itself, over its folder.
        book: Arc::new(prism_core::ports::batch::memory::MemoryJobBook::default()),
    };

    let mut processors: Vec<(String, Arc<dyn Processor>, Intake)> = vec![(
        settings.topics.uploads.clone(),
        Arc::new(prism_dedup::Dedup::new(settings.clone(), &backends)),
        settings.intake.dedup.clone(),
    )];
    for &stage in stages {
        let worker: Arc<dyn Processor> = match stage {
            StageName::Thumbnail => Arc::new(StageWorker::over(
                prism_thumbnail::ThumbnailStage::new(&settings)?,
                &settings,
                &backends,
            )),
            StageName::Detect => Arc::new(StageWorker::over(
                prism_detect::DetectStage::new(&settings)?,
                &settings,
                &backends,
            )),
            StageName::Classify => Arc::new(StageWorker::over(
                prism_classify::ClassifyStage::new(&settings)?,
                &settings,
                &backends,
            )),
        };
        let intake = settings.intake.stage(stage).clone();
        processors.push((settings.topics.jobs(stage).to_string(), worker, intake));
    }
    let stop = shutdown.child_token();
    let loops: Vec<_> = processors
        .into_iter()
        .map(|(topic, processor, intake)| {
            let consumer = ConsumerLoop {
                subscriber: Box::new(bus.subscribe(&[&topic])),
                batch_lane: None,
                publisher: backends.publisher.clone(),
                processor,
                intake,
                settings: settings.consumer.clone(),
                deadletter_topic: settings.topics.deadletter.clone(),
                stats: Arc::new(Stats::default()),
            };
            tokio::spawn(consumer.run(stop.clone()))
        })
        .collect();

    let mut watcher = Watcher::new(
        buckets,
        &settings.input_bucket,
        backends.publisher.clone(),
        &settings.topics.uploads,
    );
    let uploads = watcher.poll().await?;
    let mut outcome_topics: Vec<&str> =
        stages.iter().map(|&s| settings.topics.results(s)).collect();
    outcome_topics.push(&settings.topics.deadletter);
    let mut outcomes = bus.subscribe(&outcome_topics);
    let mut summary = Summary::new(&uploads, stages, output);
    summary.set_aside = watcher.unlisted();
    let mut log = std::fs::File::create(output.join("results.jsonl"))?;
    while !summary.complete() {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            delivery = outcomes.next() => delivery?,
        };
        log.write_all(&delivery.payload)?;
        log.write_all(b"\n")?;
        if delivery.topic == settings.topics.deadletter {
            summary.record_dead_letter(serde_json::from_slice(&delivery.payload)?);
        } else {
            summary.record_result(serde_json::from_slice(&delivery.payload)?);
        }
    }
    summary.elapsed = started.elapsed();
    print!("{summary}");
    if let Some(address) = web
        && !shutdown.is_cancelled()
    {
        let (address, serving) = start_gateway(&settings, &backends, &bus, address, &stop).await?;
        println!("serving http://{address}/ (admin: http://{address}/admin); Ctrl-C to stop");
        serving.await??;
    }
    stop.cancel();
    for handle in loops {
        handle.await??;
    }
    index.save(&index_path)?;
    Ok(())
}

/// The gateway over the embedded bus and folders, listening on `address` until `stop`.
async fn start_gateway(
    settings: &Settings,
    backends: &Backends,
    bus: &MemoryBus,
    address: &str,
    stop: &CancellationToken,
) -> anyhow::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {address}: {error}"))?;
    let bound = listener.local_addr()?;
    let app = Arc::new(prism_gateway::App::new(
        settings.clone(),
        backends.clone(),
        None,
        stop.clone(),
    ));
    let outcomes = bus.subscribe(&app.outcome_topics());
    let serving = tokio::spawn(prism_gateway::run(
        app,
        Box::new(outcomes),
        listener,
        stop.clone(),
    ));
    Ok((bound, serving))
}

/// What a run did, printed at its end.
pub struct Summary {
    output: std::path::PathBuf,
    stages: Vec<StageName>,
    /// Stages still owed a result or dead letter, per upload key.
    pending: HashMap<String, HashSet<StageName>>,
    uploads: usize,
    /// Entries of the folder that were not read: symbolic links, special files, odd names.
    set_aside: usize,
    contents: HashSet<String>,
    produced: BTreeMap<StageName, (usize, usize)>,
    outputs: usize,
    detections: usize,
    /// Each upload's likeliest class and its probability, by key.
    top_classes: BTreeMap<String, (String, f64)>,
    dead_letters: Vec<(String, String, String, String)>,
    elapsed: Duration,
}

impl Summary {
    fn new(uploads: &[SourceObject], stages: &[StageName], output: &Path) -> Self {
        Summary {
            output: output.to_path_buf(),
            stages: stages.to_vec(),
            pending: uploads
                .iter()
                .map(|u| (u.key.clone(), stages.iter().copied().collect()))
                .collect(),
            uploads: uploads.len(),
            set_aside: 0,
            contents: HashSet::new(),
            produced: BTreeMap::new(),
            outputs: 0,
            detections: 0,
            top_classes: BTreeMap::new(),
            dead_letters: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    fn complete(&self) -> bool {
        self.pending.values().all(HashSet::is_empty)
    }

    fn record_result(&mut self, result: StageResult) {
        if let Some(owed) = self.pending.get_mut(&result.source.key) {
            owed.remove(&result.stage);
        }
        self.contents.insert(result.content_hash.clone());
        let (fresh, reused) = self.produced.entry(result.stage).or_default();
        if result.deduplicated {
            *reused += 1;
        } else {
            *fresh += 1;
            self.outputs += result.outputs.len();
        }
        if let Some(detections) = result.payload.get("detections").and_then(|d| d.as_array()) {
            self.detections += detections.len();
        }
        let top = result
            .payload
            .get("classes")
            .and_then(|classes| classes.get(0));
        if let Some(top) = top {
            let label = top["label"].as_str().unwrap_or_default().to_owned();
            let score = top["score"].as_f64().unwrap_or_default();
            self.top_classes
                .insert(result.source.key.clone(), (label, score));
        }
    }

    fn record_dead_letter(&mut self, letter: DeadLetter) {
        let key = letter
            .source
            .as_ref()
            .map(|s| s.key.clone())
            .unwrap_or_default();
        if let Some(owed) = self.pending.get_mut(&key) {
            match letter.stage.parse::<StageName>() {
                Ok(stage) => {
                    owed.remove(&stage);
                }
                Err(_) => owed.clear(), // dedup refused the upload: no stage will see it
            }
        }
        self.dead_letters
            .push((key, letter.stage, letter.error.code, letter.error.reason));
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} files, {} distinct contents, in {:.2} s",
            self.uploads,
            self.contents.len(),
            self.elapsed.as_secs_f64()
        )?;
        if self.set_aside > 0 {
            writeln!(
                f,
                "  {} entries not read (symbolic links, special files, names that are not keys; see the log)",
                self.set_aside
            )?;
        }
        for stage in &self.stages {
            let (fresh, reused) = self.produced.get(stage).copied().unwrap_or_default();
            writeln!(
                f,
                "  {stage:<10} {fresh} processed, {reused} reused from identical content"
            )?;
        }
        if self.stages.contains(&StageName::Detect) {
            writeln!(f, "  {} objects detected", self.detections)?;
        }
        if !self.top_classes.is_empty() {
            writeln!(f, "  likeliest classes:")?;
            for (key, (label, score)) in self.top_classes.iter().take(CLASSES_LISTED) {
                writeln!(f, "    {key}: {label} ({:.0}%)", score * 100.0)?;
            }
            if self.top_classes.len() > CLASSES_LISTED {
                writeln!(
                    f,
                    "    … and {} more (all five of each in results.jsonl)",
                    self.top_classes.len() - CLASSES_LISTED
                )?;
            }
        }
        writeln!(
            f,
            "  {} output files under {}",
            self.outputs,
            self.output.display()
        )?;
        writeln!(
            f,
            "  results: {}",
            self.output.join("results.jsonl").display()
        )?;
        if !self.dead_letters.is_empty() {
            writeln!(f, "{} dead letters:", self.dead_letters.len())?;
            for (key, stage, code, reason) in &self.dead_letters {
                writeln!(f, "  {key} ({stage}): {code}: {reason}")?;
            }
        }
        Ok(())
    }
}
