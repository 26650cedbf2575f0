//! Planning a batch job from a calibration: CPU-seconds per stage, the replicas that meet a
//! deadline, the expected duration, and the cost per 1,000 images on always-on VMs and on a
//! serverless price model. Pure arithmetic over the fit; no measuring, no files.
//!
//! The model: every stage of a job runs at once (dedup sends each image to every stage's topic),
//! each on its own replicas of `cores_per_replica` cores kept busy (a replica takes several jobs at
//! once). A stage's work is `images x fit(megapixels)` CPU-seconds, spread evenly over its
//! replicas; no stage can finish faster than one image takes alone, which uses at most the
//! parallelism calibration saw (CPU time / wall time: about 1 for thumbnail, more for the rayon
//! models). The job takes as long as its slowest stage.

use crate::calibration::Calibration;
use prism_core::contract::StageName;
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// Default price of an always-on vCPU-hour (the job summaries' too): see
/// [`prism_core::runtime::config::DEFAULT_VCPU_HOUR_USD`] for its source.
pub use prism_core::runtime::config::DEFAULT_VCPU_HOUR_USD;
/// Default serverless compute price: AWS Lambda, x86, us-east-1, first 6 billion GB-seconds a
/// month, $0.0000166667 per GB-second (<https://aws.amazon.com/lambda/pricing/>, unchanged since
/// Lambda moved to 1 ms billing in December 2020; checked against third-party copies of the page
/// on 2026-11-30). The free tier is left out. A default to override.
pub const DEFAULT_GB_SECOND_USD: f64 = 0.000_016_666_7;
/// Default serverless request price: AWS Lambda, $0.20 per million requests (same page and date).
pub const DEFAULT_REQUEST_USD: f64 = 0.000_000_2;
/// Lambda gives a function one vCPU at 1,769 MB and CPU in proportion to memory ("Configure Lambda
/// function memory", <https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html>).
/// Lambda bills memory in GB of 1,024 MB.
pub const LAMBDA_GB_PER_VCPU: f64 = 1769.0 / 1024.0;
/// The largest memory a Lambda function can have (10,240 MB).
pub const LAMBDA_MAX_GB: f64 = 10.0;
/// Default serverless memory: the smallest that gets a whole vCPU.
pub const DEFAULT_MEMORY_GB: f64 = LAMBDA_GB_PER_VCPU;
/// Default cores per replica: a c7i.large, the instance the default vCPU price is for.
pub const DEFAULT_CORES_PER_REPLICA: u32 = 2;
/// Replicas per stage when no deadline asks for more.
pub const DEFAULT_REPLICAS: u32 = 1;

/// What compute costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    pub vcpu_hour_usd: f64,
    pub gb_second_usd: f64,
    pub request_usd: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            vcpu_hour_usd: DEFAULT_VCPU_HOUR_USD,
            gb_second_usd: DEFAULT_GB_SECOND_USD,
            request_usd: DEFAULT_REQUEST_USD,
        }
    }
}

/// The job to plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub images: u64,
    pub megapixels: f64,
    pub stages: Vec<StageName>,
    pub deadline: Option<Duration>,
    pub cores_per_replica: u32,
    /// Replicas per stage when there is no deadline.
    pub replicas: u32,
    /// A serverless function's memory, in GB as Lambda bills it (MB / 1,024).
    pub memory_gb: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StagePlan {
    pub stage: StageName,
    /// The fit at the job's image size.
    pub cpu_s_per_image: f64,
    /// `images x cpu_s_per_image`.
    pub cpu_s: f64,
    pub replicas: u64,
    pub duration_s: f64,
    /// One image alone on a replica: the least this stage can take, however many replicas.
    pub one_image_s: f64,
    /// The deadline is met by this stage; `None` without a deadline.
    pub deadline_met: Option<bool>,
    /// The job's image size lies outside the sizes the stage was calibrated on.
    pub extrapolated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Costs {
    /// Always-on VMs: every replica's cores, paid for the job's whole duration.
    pub vm_usd: f64,
    pub vm_usd_per_1000_images: f64,
    /// One invocation per image and stage.
    pub requests: u64,
    pub gb_seconds: f64,
    pub serverless_usd: f64,
    pub serverless_usd_per_1000_images: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub images: u64,
    pub megapixels: f64,
    pub cores_per_replica: u32,
    pub deadline_s: Option<f64>,
    pub stages: Vec<StagePlan>,
    /// The slowest stage's duration.
    pub duration_s: f64,
    pub cpu_s: f64,
    pub deadline_met: Option<bool>,
    pub memory_gb: f64,
    pub prices: Prices,
    pub costs: Costs,
}

#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    #[error(
        "the calibration has no fit for {0}: run `prism plan --calibrate --sample DIR --stages {0}`"
    )]
    NotCalibrated(StageName),
    #[error(
        "{stage}'s fit predicts {cpu_s:.4} CPU-seconds for a {megapixels} MP image, which is not a \
         cost: calibrate on images nearer that size"
    )]
    NoCost {
        stage: StageName,
        megapixels: f64,
        cpu_s: f64,
    },
    #[error("{what} must be positive, got {value}")]
    NotPositive { what: &'static str, value: f64 },
    #[error("{what} cannot be negative, got {value}")]
    Negative { what: &'static str, value: f64 },
    #[error("--memory-gb {0} is more than a Lambda function can have ({LAMBDA_MAX_GB} GB)")]
    TooMuchMemory(f64),
    #[error("no stages to plan")]
    NoStages,
}

fn positive(what: &'static str, value: f64) -> Result<(), PlanError> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(PlanError::NotPositive { what, value })
    }
}

fn price(what: &'static str, value: f64) -> Result<(), PlanError> {
    if value >= 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(PlanError::Negative { what, value })
    }
}

/// Plans `job` from `calibration` at `prices`.
pub fn plan(calibration: &Calibration, job: &Job, prices: &Prices) -> Result<Plan, PlanError> {
    price("--vcpu-hour-usd", prices.vcpu_hour_usd)?;
    price("--gb-second-usd", prices.gb_second_usd)?;
    price("--request-usd", prices.request_usd)?;
    positive("--images", job.images as f64)?;
    positive("--megapixels", job.megapixels)?;
    positive("--cores-per-replica", f64::from(job.cores_per_replica))?;
    positive("--replicas", f64::from(job.replicas))?;
    positive("--memory-gb", job.memory_gb)?;
    if job.memory_gb > LAMBDA_MAX_GB {
        return Err(PlanError::TooMuchMemory(job.memory_gb));
    }
    if job.stages.is_empty() {
        return Err(PlanError::NoStages);
    }
    let images = job.images as f64;
    let cores = f64::from(job.cores_per_replica);
    let function_vcpus = job.memory_gb / LAMBDA_GB_PER_VCPU;
    let mut stages = Vec::with_capacity(job.stages.len());
    let mut gb_seconds = 0.0;
    for &stage in &job.stages {
        let calibrated = calibration
            .stages
            .get(&stage)
            .ok_or(PlanError::NotCalibrated(stage))?;
        let cpu_s_per_image = calibrated.fit.cpu_s(job.megapixels);
        if cpu_s_per_image <= 0.0 {
            return Err(PlanError::NoCost {
                stage,
                megapixels: job.megapixels,
                cpu_s: cpu_s_per_image,
            });
        }
        let cpu_s = images * cpu_s_per_image;
        // An image's own threads; never more than the replica's cores.
        let image_threads = calibrated.parallelism.clamp(1.0, cores);
        let one_image_s = cpu_s_per_image / image_threads;
        let replicas = match job.deadline {
            // Enough cores to finish the work in time, but no more than would let every image run
            // at once: past that, more replicas only idle.
            Some(deadline) => {
                let needed = (cpu_s / (cores * deadline.as_secs_f64())).ceil();
                let useful = (images * image_threads / cores).ceil();
                needed.min(useful).max(1.0) as u64
            }
            None => u64::from(job.replicas),
        };
        let duration_s = (cpu_s / (replicas as f64 * cores)).max(one_image_s);
        // A function runs one image, on as many of its vCPUs as the stage uses.
        gb_seconds += images * job.memory_gb * cpu_s_per_image
            / function_vcpus.min(calibrated.parallelism.max(1.0));
        stages.push(StagePlan {
            stage,
            cpu_s_per_image,
            cpu_s,
            replicas,
            duration_s,
            one_image_s,
            deadline_met: job.deadline.map(|d| duration_s <= d.as_secs_f64()),
            extrapolated: job.megapixels < calibration.sample.megapixels_min
                || job.megapixels > calibration.sample.megapixels_max,
        });
    }
    let duration_s = stages.iter().map(|s| s.duration_s).fold(0.0, f64::max);
    let cpu_s = stages.iter().map(|s| s.cpu_s).sum();
    let vcpus: f64 = stages.iter().map(|s| s.replicas as f64 * cores).sum();
    let vm_usd = vcpus * duration_s / 3600.0 * prices.vcpu_hour_usd;
    let requests = job.images * job.stages.len() as u64;
    let serverless_usd = gb_seconds * prices.gb_second_usd + requests as f64 * prices.request_usd;
    let per_1000 = |usd: f64| usd / images * 1000.0;
    Ok(Plan {
        images: job.images,
        megapixels: job.megapixels,
        cores_per_replica: job.cores_per_replica,
        deadline_s: job.deadline.map(|d| d.as_secs_f64()),
        deadline_met: job.deadline.map(|d| duration_s <= d.as_secs_f64()),
        stages,
        duration_s,
        cpu_s,
        memory_gb: job.memory_gb,
        prices: *prices,
        costs: Costs {
            vm_usd,
            vm_usd_per_1000_images: per_1000(vm_usd),
            requests,
            gb_seconds,
            serverless_usd,
            serverless_usd_per_1000_images: per_1000(serverless_usd),
        },
    })
}

/// A duration as a person reads it: `42.0 s`, `12.5 min`, `3.2 h`.
fn human(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.1} s")
    } else if seconds < 7200.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} images of {:.1} MP, replicas of {} cores{}",
            self.images,
            self.megapixels,
            self.cores_per_replica,
            match self.deadline_s {
                Some(deadline) => format!(", deadline {}", human(deadline)),
                None => String::new(),
            }
        )?;
        writeln!(
            f,
            "  {:<10} {:>12} {:>12} {:>9} {:>11} {:>10}",
            "stage", "CPU s/image", "CPU s", "replicas", "duration", "deadline"
        )?;
        for stage in &self.stages {
            writeln!(
                f,
                "  {:<10} {:>12.3} {:>12.1} {:>9} {:>11} {:>10}",
                stage.stage,
                stage.cpu_s_per_image,
                stage.cpu_s,
                stage.replicas,
                human(stage.duration_s),
                match stage.deadline_met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "-",
                }
            )?;
        }
        writeln!(
            f,
            "  {:<10} {:>12} {:>12.1} {:>9} {:>11}",
            "job",
            "",
            self.cpu_s,
            self.stages.iter().map(|s| s.replicas).sum::<u64>(),
            human(self.duration_s)
        )?;
        writeln!(f, "cost per 1,000 images:")?;
        writeln!(
            f,
            "  always-on VMs  ${:.4}  (${:.4} per vCPU-hour, every replica paid for the job's {})",
            self.costs.vm_usd_per_1000_images,
            self.prices.vcpu_hour_usd,
            human(self.duration_s)
        )?;
        writeln!(
            f,
            "  serverless     ${:.4}  (${:.10} per GB-second at {:.3} GB, ${:.2} per million requests)",
            self.costs.serverless_usd_per_1000_images,
            self.prices.gb_second_usd,
            self.memory_gb,
            self.prices.request_usd * 1_000_000.0
        )?;
        for stage in &self.stages {
            if stage.deadline_met == Some(false) {
                writeln!(
                    f,
                    "deadline missed: one {:.1} MP image takes {} in {} alone, longer than the \
                     deadline; no number of replicas meets it",
                    self.megapixels,
                    human(stage.one_image_s),
                    stage.stage
                )?;
            }
            if stage.extrapolated {
                writeln!(
                    f,
                    "note: {:.1} MP is outside the sizes {} was calibrated on: the fit is extrapolated",
                    self.megapixels, stage.stage
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::{Machine, SampleSummary, StageCalibration};
    use crate::fit::LinearFit;
    use std::collections::BTreeMap;

    /// thumbnail: 0.02 + 0.01 s/MP on one thread; classify: 0.1 + 0.0 s/MP on 2 threads.
    fn calibration() -> Calibration {
        let line = |a, b| LinearFit {
            a,
            b,
            r_squared: 1.0,
            samples: 10,
        };
        Calibration {
            created: "2026-11-30T00:00:00Z".parse().unwrap(),
            machine: Machine {
                cores: 2,
                cpu_model: None,
            },
            commit: None,
            sample: SampleSummary {
                images: 10,
                megapixels_min: 1.0,
                megapixels_mean: 5.0,
                megapixels_max: 20.0,
            },
            stages: BTreeMap::from([
                (
                    StageName::Thumbnail,
                    StageCalibration {
                        fit: line(0.02, 0.01),
                        parallelism: 1.0,
                        batch: 1,
                        samples: Vec::new(),
                    },
                ),
                (
                    StageName::Classify,
                    StageCalibration {
                        fit: line(0.1, 0.0),
                        parallelism: 2.0,
                        batch: 8,
                        samples: Vec::new(),
                    },
                ),
            ]),
        }
    }

    fn job(stages: &[StageName], deadline: Option<Duration>) -> Job {
        Job {
            images: 1000,
            megapixels: 8.0,
            stages: stages.to_vec(),
            deadline,
            cores_per_replica: 2,
            replicas: 1,
            memory_gb: LAMBDA_GB_PER_VCPU,
        }
    }

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-9 * y.abs().max(1.0)
    }

    #[test]
    fn without_a_deadline_one_replica_per_stage_sets_the_duration() {
        let plan = plan(
            &calibration(),
            &job(&[StageName::Thumbnail, StageName::Classify], None),
            &Prices::default(),
        )
        .unwrap();
        let [thumbnail, classify] = &plan.stages[..] else {
            panic!("two stages: {plan:?}")
        };
        // 1000 x (0.02 + 0.08) = 100 CPU-s on 2 cores: 50 s.
        assert!(close(thumbnail.cpu_s_per_image, 0.1));
        assert!(close(thumbnail.cpu_s, 100.0));
        assert_eq!(thumbnail.replicas, 1);
        assert!(close(thumbnail.duration_s, 50.0));
        assert!(close(classify.cpu_s, 100.0));
        assert!(close(plan.cpu_s, 200.0));
        assert!(close(plan.duration_s, 50.0));
        assert_eq!(plan.deadline_met, None);
        // 2 replicas x 2 vCPUs x 50 s at $3.6 a vCPU-hour: $0.2 for 1,000 images.
        let prices = Prices {
            vcpu_hour_usd: 3.6,
            gb_second_usd: 1.0,
            request_usd: 0.5,
        };
        let plan = super::plan(
            &calibration(),
            &job(&[StageName::Thumbnail, StageName::Classify], None),
            &prices,
        )
        .unwrap();
        assert!(close(plan.costs.vm_usd_per_1000_images, 0.2));
        // One vCPU a function: GB-s = memory x CPU-s for both stages; 2,000 requests.
        assert_eq!(plan.costs.requests, 2000);
        assert!(close(plan.costs.gb_seconds, LAMBDA_GB_PER_VCPU * 200.0));
        assert!(close(
            plan.costs.serverless_usd_per_1000_images,
            LAMBDA_GB_PER_VCPU * 200.0 + 1000.0
        ));
    }

    #[test]
    fn a_deadline_sets_the_replicas() {
        // 100 CPU-s in 10 s on 2-core replicas: 5 replicas, 10 s.
        let plan = plan(
            &calibration(),
            &job(&[StageName::Thumbnail], Some(Duration::from_secs(10))),
            &Prices::default(),
        )
        .unwrap();
        assert_eq!(plan.stages[0].replicas, 5);
        assert!(close(plan.duration_s, 10.0));
        assert_eq!(plan.deadline_met, Some(true));
        // 12 s needs 100 / 24 -> 5 replicas too, finishing in 10 s.
        let plan = super::plan(
            &calibration(),
            &job(&[StageName::Thumbnail], Some(Duration::from_secs(12))),
            &Prices::default(),
        )
        .unwrap();
        assert_eq!(plan.stages[0].replicas, 5);
        assert!(close(plan.duration_s, 10.0));
    }

    #[test]
    fn a_deadline_shorter_than_one_image_is_reported_missed() {
        // One 8 MP thumbnail takes 0.1 s on its one thread: 50 ms cannot be met; the replicas
        // stop where every image runs at once (1000 images, 2 per replica).
        let plan = plan(
            &calibration(),
            &job(&[StageName::Thumbnail], Some(Duration::from_millis(50))),
            &Prices::default(),
        )
        .unwrap();
        let stage = &plan.stages[0];
        assert_eq!(stage.replicas, 500);
        assert!(close(stage.one_image_s, 0.1));
        assert!(close(plan.duration_s, 0.1));
        assert_eq!(stage.deadline_met, Some(false));
        assert_eq!(plan.deadline_met, Some(false));
        assert!(plan.to_string().contains("deadline missed"), "{plan}");
    }

    #[test]
    fn unknown_stages_and_sizes_outside_the_sample_are_said() {
        let error = plan(
            &calibration(),
            &job(&[StageName::Detect], None),
            &Prices::default(),
        )
        .unwrap_err();
        assert_eq!(error, PlanError::NotCalibrated(StageName::Detect));
        assert!(error.to_string().contains("--calibrate"));
        let mut big = job(&[StageName::Thumbnail], None);
        big.megapixels = 50.0;
        let plan = plan(&calibration(), &big, &Prices::default()).unwrap();
        assert!(plan.stages[0].extrapolated);
        assert!(plan.to_string().contains("extrapolated"));
    }

    #[test]
    fn nonsense_inputs_are_refused() {
        let mut no_images = job(&[StageName::Thumbnail], None);
        no_images.images = 0;
        assert!(matches!(
            plan(&calibration(), &no_images, &Prices::default()),
            Err(PlanError::NotPositive {
                what: "--images",
                ..
            })
        ));
        let negative = Prices {
            request_usd: -1.0,
            ..Prices::default()
        };
        assert!(matches!(
            plan(
                &calibration(),
                &job(&[StageName::Thumbnail], None),
                &negative
            ),
            Err(PlanError::Negative {
                what: "--request-usd",
                ..
            })
        ));
        let mut huge = job(&[StageName::Thumbnail], None);
        huge.memory_gb = 12.0;
        assert_eq!(
            plan(&calibration(), &huge, &Prices::default()),
            Err(PlanError::TooMuchMemory(12.0))
        );
    }

    #[test]
    fn a_fit_that_predicts_no_cost_is_refused() {
        let mut calibration = calibration();
        calibration
            .stages
            .get_mut(&StageName::Thumbnail)
            .unwrap()
            .fit
            .a = -1.0;
        let error = plan(
            &calibration,
            &job(&[StageName::Thumbnail], None),
            &Prices::default(),
        )
        .unwrap_err();
        assert!(matches!(error, PlanError::NoCost { .. }), "{error}");
    }
}
