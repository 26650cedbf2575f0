//! `prism plan --calibrate`: runs a sample of images through each stage's own code, in this
//! process and one image at a time (as a batch of its copies, see [`measure`]), and fits each
//! stage's CPU-seconds per image against the image's megapixels. The result is a JSON file that
//! planning reads.
//!
//! CPU time is the whole process's (getrusage RUSAGE_SELF), not the calling thread's: detect and
//! classify spread a batch over rayon's threads, whose time a per-thread clock would miss, and
//! rayon's spinning before its threads sleep is CPU a replica pays for too. Nothing else in the
//! process works while a batch runs, so the process's time is the stage's.

use crate::fit::{self, FitError, LinearFit, Sample};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use prism_core::contract::StageName;
use prism_core::runtime::config::Settings;
use prism_core::runtime::worker::Stage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use thiserror::Error;

/// The file name under `$PRISM_HOME`.
const HOME_FILE: &str = "calibration.json";
/// The file in the working directory when `PRISM_HOME` is not set.
const LOCAL_FILE: &str = "prism-calibration.json";

/// The machine the measurements were taken on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The cores this process could use.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo, where there is one.
    pub cpu_model: Option<String>,
}

/// The sizes of the sample's images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSummary {
    pub images: usize,
    pub megapixels_min: f64,
    pub megapixels_mean: f64,
    pub megapixels_max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCalibration {
    pub fit: LinearFit,
    /// CPU time over wall time across the sample: how many cores a batch keeps busy.
    pub parallelism: f64,
    /// Images per stage run (copies of one): the CPU-seconds are per image of such a batch.
    pub batch: usize,
    /// The measurements the fit was made from, to check it or refit with more.
    pub samples: Vec<Sample>,
}

/// What `--calibrate` writes and planning reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub created: DateTime<Utc>,
    pub machine: Machine,
    /// HEAD of the checkout this binary was built from, read at calibration time, where it is
    /// still there.
    pub commit: Option<String>,
    pub sample: SampleSummary,
    pub stages: BTreeMap<StageName, StageCalibration>,
}

#[derive(Debug, Error)]
pub enum CalibrationError {
    #[error(
        "no calibration at {0}: run `prism plan --calibrate --sample DIR` first (or point \
         --calibration at one)"
    )]
    Missing(PathBuf),
    #[error("cannot read the calibration at {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the calibration at {path} is not valid: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the calibration to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{stage}: {source}")]
    Fit { stage: StageName, source: FitError },
}

/// `$PRISM_HOME/calibration.json` where `PRISM_HOME` is set, else `./prism-calibration.json`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("PRISM_HOME") {
        Some(home) => Path::new(&home).join(HOME_FILE),
        None => PathBuf::from(LOCAL_FILE),
    }
}

impl Calibration {
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => CalibrationError::Missing(path.to_path_buf()),
            _ => CalibrationError::Read {
                path: path.to_path_buf(),
                source,
            },
        })?;
        serde_json::from_slice(&text).map_err(|source| CalibrationError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let write = |source| CalibrationError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(write)?;
        }
        let text = serde_json::to_vec_pretty(self).expect("a calibration serialises");
        std::fs::write(path, text).map_err(write)
    }
}

/// One image of the sample.
pub struct Image {
    pub name: String,
    pub megapixels: f64,
    pub bytes: Bytes,
}

/// One stage's measurements.
#[derive(Debug, Default)]
pub struct Measured {
    pub batch: usize,
    pub samples: Vec<Sample>,
    pub wall_s: f64,
    /// Images the stage refused, with its reason.
    pub refused: Vec<(String, String)>,
}

/// The process's CPU time so far, user and system, in seconds.
fn process_cpu_s() -> anyhow::Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let seconds = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// The stage's own code, built as its service builds it.
pub fn build_stage(stage: StageName, settings: &Settings) -> anyhow::Result<Box<dyn Stage>> {
    Ok(match stage {
        StageName::Thumbnail => Box::new(prism_thumbnail::ThumbnailStage::new(settings)?),
        StageName::Detect => Box::new(prism_detect::DetectStage::new(settings)?),
        StageName::Classify => Box::new(prism_classify::ClassifyStage::new(settings)?),
    })
}

/// Runs every image through `stage` alone, as a batch of `batch` copies of it (the batch a
/// replica runs when a job keeps its queue full: the models share one forward pass among a batch),
/// `rounds` times, and keeps the median CPU time per image (with its wall time): another
/// process's burst on a shared machine moves one round, not the median. The first image runs once
/// unmeasured before (first-use costs: page faults in the weights, rayon's threads starting).
pub fn measure(
    stage: &dyn Stage,
    images: &[Image],
    batch: usize,
    rounds: u32,
) -> anyhow::Result<Measured> {
    anyhow::ensure!(batch > 0 && rounds > 0, "at least one image and one round");
    if let Some(first) = images.first() {
        stage.run(&vec![first.bytes.clone(); batch]);
    }
    let mut measured = Measured {
        batch,
        ..Measured::default()
    };
    'images: for image in images {
        let copies = vec![image.bytes.clone(); batch];
        let mut runs = Vec::new();
        for _ in 0..rounds {
            let cpu_before = process_cpu_s()?;
            let started = Instant::now();
            let outcomes = stage.run(&copies);
            let wall_s = started.elapsed().as_secs_f64() / batch as f64;
            let cpu_s = (process_cpu_s()? - cpu_before) / batch as f64;
            anyhow::ensure!(
                outcomes.len() == batch,
                "{} gave {} outcomes for {batch} copies of {}",
                stage.name(),
                outcomes.len(),
                image.name
            );
            if let Some(Err(failure)) = outcomes.into_iter().find(Result::is_err) {
                measured.refused.push((image.name.clone(), failure.reason));
                continue 'images;
            }
            runs.push((cpu_s, wall_s));
        }
        runs.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (cpu_s, wall_s) = runs[runs.len() / 2];
        measured.samples.push(Sample {
            megapixels: image.megapixels,
            cpu_s,
        });
        measured.wall_s += wall_s;
    }
    Ok(measured)
}

impl StageCalibration {
    pub fn from_measured(stage: StageName, measured: &Measured) -> Result<Self, CalibrationError> {
        let fit = fit::fit(&measured.samples)
            .map_err(|source| CalibrationError::Fit { stage, source })?;
        let cpu_s: f64 = measured.samples.iter().map(|s| s.cpu_s).sum();
        Ok(StageCalibration {
            fit,
            parallelism: cpu_s / measured.wall_s,
            batch: measured.batch,
            samples: measured.samples.clone(),
        })
    }
}

impl SampleSummary {
    pub fn of(images: &[Image]) -> Self {
        let sizes = images.iter().map(|image| image.megapixels);
        SampleSummary {
            images: images.len(),
            megapixels_min: sizes.clone().fold(f64::INFINITY, f64::min),
            megapixels_mean: sizes.clone().sum::<f64>() / images.len() as f64,
            megapixels_max: sizes.fold(0.0, f64::max),
        }
    }
}

impl Machine {
    pub fn this() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("model name"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            });
        Machine {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
        }
    }
}

/// HEAD of the checkout this binary was built from, marked when it had changes; `None` when the
/// checkout (or git) is not here.
pub fn source_commit() -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "HEAD"])?;
    Some(match git(&["status", "--porcelain"]) {
        Some(changes) if !changes.is_empty() => format!("{hash} (with uncommitted changes)"),
        _ => hash,
    })
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} images of {:.1} to {:.1} MP (mean {:.1}), {} cores{}, {}",
            self.sample.images,
            self.sample.megapixels_min,
            self.sample.megapixels_max,
            self.sample.megapixels_mean,
            self.machine.cores,
            self.machine
                .cpu_model
                .as_deref()
                .map(|model| format!(" ({model})"))
                .unwrap_or_default(),
            self.created.format("%Y-%m-%d %H:%M UTC"),
        )?;
        writeln!(
            f,
            "  {:<10} {:>10} {:>13} {:>7} {:>8} {:>6} {:>12}",
            "stage", "a (CPU s)", "b (CPU s/MP)", "R²", "samples", "batch", "parallelism"
        )?;
        for (stage, calibrated) in &self.stages {
            let fit = &calibrated.fit;
            writeln!(
                f,
                "  {:<10} {:>10.4} {:>13.4} {:>7.3} {:>8} {:>6} {:>12.2}",
                stage,
                fit.a,
                fit.b,
                fit.r_squared,
                fit.samples,
                calibrated.batch,
                calibrated.parallelism
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration() -> Calibration {
        Calibration {
            created: "2026-11-30T12:00:00Z".parse().unwrap(),
            machine: Machine {
                cores: 2,
                cpu_model: Some("Example CPU".into()),
            },
            commit: None,
            sample: SampleSummary {
                images: 2,
                megapixels_min: 1.0,
                megapixels_mean: 1.5,
                megapixels_max: 2.0,
            },
            stages: BTreeMap::from([(
                StageName::Detect,
                StageCalibration {
                    fit: LinearFit {
                        a: 0.1,
                        b: 0.02,
                        r_squared: 0.9,
                        samples: 2,
                    },
                    parallelism: 1.8,
                    batch: 8,
                    samples: Vec::new(),
                },
            )]),
        }
    }

    #[test]
    fn a_saved_calibration_loads_back_the_same() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("nested/calibration.json");
        calibration().save(&path).unwrap();
        assert_eq!(Calibration::load(&path).unwrap(), calibration());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"detect\""), "{text}");
    }

    #[test]
    fn a_missing_calibration_says_to_calibrate() {
        let folder = tempfile::tempdir().unwrap();
        let error = Calibration::load(&folder.path().join("none.json")).unwrap_err();
        assert!(matches!(error, CalibrationError::Missing(_)));
        assert!(error.to_string().contains("--calibrate"), "{error}");
    }

    #[test]
    fn parallelism_is_cpu_over_wall_time() {
        let measured = Measured {
            batch: 1,
            samples: vec![
                Sample {
                    megapixels: 1.0,
                    cpu_s: 1.0,
                },
                Sample {
                    megapixels: 3.0,
                    cpu_s: 3.0,
                },
            ],
            wall_s: 2.5,
            refused: Vec::new(),
        };
        let stage = StageCalibration::from_measured(StageName::Detect, &measured).unwrap();
        assert!((stage.parallelism - 1.6).abs() < 1e-12);
        assert!((stage.fit.b - 1.0).abs() < 1e-12);
    }
}
