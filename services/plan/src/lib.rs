//! `prism plan`: what a batch job will take and cost, from a model fitted to measurements.
//!
//! [`calibration`] measures each stage's own code on a sample of images and fits its
//! CPU-seconds per image against megapixels ([`fit`]); [`plan`] turns that fit into replicas,
//! duration and cost for a job. [`run`] is the command.

pub mod calibration;
pub mod fit;
pub mod plan;

use anyhow::Context;
use bytes::Bytes;
use calibration::{Calibration, Image, Machine, SampleSummary, StageCalibration};
use chrono::Utc;
use clap::Args;
use plan::{Job, Prices};
use prism_core::contract::StageName;
use prism_core::runtime::config::Settings;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Args)]
#[command(after_help = "\
Calibrate once per machine and build: `prism plan --calibrate --sample DIR` runs every image of \
DIR through each stage's own code in this process (no servers; detect and classify need their \
weights, deploy/local/fetch-assets.sh) and fits CPU-seconds = a + b x megapixels per stage. \
Then `prism plan --images 10000 --stages classify --deadline 15m` plans a job from that fit.

The default prices are public list prices, to override: AWS EC2 on-demand c7i.large (us-east-1, \
Linux, $0.08925/h for 2 vCPUs) and AWS Lambda x86 (us-east-1, $0.0000166667 per GB-second, $0.20 \
per million requests); see the README, \"Planning a batch job\".")]
pub struct PlanArgs {
    /// Measure the stages on --sample and write the calibration, instead of planning.
    #[arg(long, requires = "sample")]
    pub calibrate: bool,
    /// The sample images for --calibrate: the files in DIR (not its subfolders), of varied sizes.
    #[arg(long, value_name = "DIR", conflicts_with = "images")]
    pub sample: Option<PathBuf>,
    /// Runs of each image per stage in --calibrate; the median CPU time is kept.
    #[arg(
        long,
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..),
        conflicts_with = "images"
    )]
    pub rounds: u32,
    /// Images per stage run in --calibrate (copies of one image) [default: each stage's
    /// configured `intake.<stage>.max_batch`: 8 for the models, 1 for thumbnail].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "images")]
    pub batch: Option<u64>,
    /// Stages to calibrate or plan, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "thumbnail,detect,classify"
    )]
    pub stages: Vec<StageName>,
    /// The calibration file [default: $PRISM_HOME/calibration.json when PRISM_HOME is set, else
    /// ./prism-calibration.json].
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Images in the job.
    #[arg(
        long,
        required_unless_present = "calibrate",
        conflicts_with = "calibrate"
    )]
    pub images: Option<u64>,
    /// Finish within this long (`90s`, `15m`, `2h`): sets the replicas per stage.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// The job's typical image size [default: the calibration sample's mean].
    #[arg(long)]
    pub megapixels: Option<f64>,
    /// Cores of one replica (one VM).
    #[arg(long, default_value_t = plan::DEFAULT_CORES_PER_REPLICA)]
    pub cores_per_replica: u32,
    /// Replicas per stage when there is no --deadline.
    #[arg(long, default_value_t = plan::DEFAULT_REPLICAS, conflicts_with = "deadline")]
    pub replicas: u32,
    /// Always-on VMs: US dollars per vCPU-hour.
    #[arg(long, default_value_t = plan::DEFAULT_VCPU_HOUR_USD)]
    pub vcpu_hour_usd: f64,
    /// Serverless: US dollars per GB-second.
    #[arg(long, default_value_t = plan::DEFAULT_GB_SECOND_USD)]
    pub gb_second_usd: f64,
    /// Serverless: US dollars per request (invocation).
    #[arg(long, default_value_t = plan::DEFAULT_REQUEST_USD)]
    pub request_usd: f64,
    /// Serverless: a function's memory in GB (MB / 1,024); CPU comes with it, one vCPU at 1,769 MB.
    #[arg(long, default_value_t = plan::DEFAULT_MEMORY_GB)]
    pub memory_gb: f64,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `prism plan`: calibrates, or plans from the calibration.
pub fn run(settings: &Settings, args: &PlanArgs) -> anyhow::Result<()> {
    let path = args
        .calibration
        .clone()
        .unwrap_or_else(calibration::default_path);
    match &args.sample {
        Some(sample) if args.calibrate => calibrate(settings, args, sample, &path),
        _ => print_plan(args, &path),
    }
}

fn calibrate(
    settings: &Settings,
    args: &PlanArgs,
    sample: &Path,
    path: &Path,
) -> anyhow::Result<()> {
    let images = read_sample(sample)?;
    anyhow::ensure!(
        !images.is_empty(),
        "no images in {}: --sample wants a folder of pictures",
        sample.display()
    );
    let mut stages = BTreeMap::new();
    for &stage in &args.stages {
        let code = calibration::build_stage(stage, settings)
            .with_context(|| format!("cannot build the {stage} stage"))?;
        let batch = args
            .batch
            .map_or(settings.intake.stage(stage).max_batch, |b| b as usize);
        eprintln!(
            "measuring {stage} on {} images, in batches of {batch}, {} rounds…",
            images.len(),
            args.rounds
        );
        let measured = calibration::measure(code.as_ref(), &images, batch, args.rounds)?;
        for (name, reason) in &measured.refused {
            eprintln!("  {stage} refused {name}: {reason}");
        }
        stages.insert(stage, StageCalibration::from_measured(stage, &measured)?);
    }
    let calibration = Calibration {
        created: Utc::now(),
        machine: Machine::this(),
        commit: calibration::source_commit(),
        sample: SampleSummary::of(&images),
        stages,
    };
    calibration.save(path)?;
    print!("{calibration}");
    println!("written to {}", path.display());
    Ok(())
}

/// The pictures among the files of `folder`, sorted by name; other files are skipped, with a word.
fn read_sample(folder: &Path) -> anyhow::Result<Vec<Image>> {
    let mut paths = std::fs::read_dir(folder)
        .with_context(|| format!("cannot list the sample folder {}", folder.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()?;
    paths.sort();
    let mut images = Vec::new();
    for path in paths.into_iter().filter(|path| path.is_file()) {
        let bytes = Bytes::from(
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        match prism_imaging::probe(&bytes) {
            Ok(info) => images.push(Image {
                name: path.display().to_string(),
                megapixels: f64::from(info.width) * f64::from(info.height) / 1e6,
                bytes,
            }),
            Err(error) => eprintln!("skipping {}: {error}", path.display()),
        }
    }
    Ok(images)
}

fn print_plan(args: &PlanArgs, path: &Path) -> anyhow::Result<()> {
    let calibration = Calibration::load(path)?;
    let job = Job {
        images: args.images.context("--images is required to plan")?,
        megapixels: args
            .megapixels
            .unwrap_or(calibration.sample.megapixels_mean),
        stages: args.stages.clone(),
        deadline: args.deadline,
        cores_per_replica: args.cores_per_replica,
        replicas: args.replicas,
        memory_gb: args.memory_gb,
    };
    let prices = Prices {
        vcpu_hour_usd: args.vcpu_hour_usd,
        gb_second_usd: args.gb_second_usd,
        request_usd: args.request_usd,
    };
    let plan = plan::plan(&calibration, &job, &prices)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{plan}");
        println!(
            "from {} ({} images, {})",
            path.display(),
            calibration.sample.images,
            calibration.created.format("%Y-%m-%d")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        plan: PlanArgs,
    }

    fn parse(line: &str) -> Result<PlanArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("plan").chain(line.split_whitespace()))
            .map(|command| command.plan)
    }

    #[test]
    fn a_plan_needs_images_and_reads_a_deadline() {
        let args = parse("--images 1000 --stages classify,detect --deadline 15m").unwrap();
        assert_eq!(args.images, Some(1000));
        assert_eq!(args.stages, [StageName::Classify, StageName::Detect]);
        assert_eq!(args.deadline, Some(Duration::from_secs(900)));
        assert!(parse("--stages classify").is_err());
        assert!(parse("--images 10 --deadline soon").is_err());
        assert!(parse("--images 10 --deadline 1m --replicas 3").is_err());
    }

    #[test]
    fn calibrating_needs_a_sample_and_no_job() {
        assert!(parse("--calibrate").is_err());
        assert!(parse("--calibrate --sample photos --images 10").is_err());
        assert!(parse("--sample photos --images 10").is_err());
        let args = parse("--calibrate --sample photos --stages thumbnail --rounds 1").unwrap();
        assert_eq!(args.sample, Some(PathBuf::from("photos")));
        assert_eq!(args.rounds, 1);
    }
}
