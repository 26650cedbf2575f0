//! The cost of one image as a straight line in its size: `cpu_s = a + b * megapixels`, fitted by
//! ordinary least squares, with its coefficient of determination (R²).
//!
//! Twelve lines of arithmetic: a regression crate would bring matrices for a two-parameter fit.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One measurement: an image's size and the CPU time a stage spent on it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub megapixels: f64,
    pub cpu_s: f64,
}

/// `cpu_s = a + b * megapixels`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    /// CPU-seconds an image costs whatever its size (intercept).
    pub a: f64,
    /// CPU-seconds per megapixel (slope).
    pub b: f64,
    /// 1 - residual / total sum of squares: the share of the samples' variance the line explains
    /// (1 when every sample lies on it).
    pub r_squared: f64,
    pub samples: usize,
}

#[derive(Debug, Error, PartialEq)]
pub enum FitError {
    #[error("a line needs at least 2 samples, got {0}")]
    TooFewSamples(usize),
    #[error(
        "every sample has the same size ({0} MP): the cost per megapixel cannot be told from the \
         cost per image; calibrate on images of different sizes"
    )]
    OneSize(f64),
}

impl LinearFit {
    /// The fitted CPU-seconds of one image of `megapixels`.
    pub fn cpu_s(&self, megapixels: f64) -> f64 {
        self.a + self.b * megapixels
    }
}

/// The least-squares line through `samples`.
pub fn fit(samples: &[Sample]) -> Result<LinearFit, FitError> {
    if samples.len() < 2 {
        return Err(FitError::TooFewSamples(samples.len()));
    }
    let n = samples.len() as f64;
    let mean_x = samples.iter().map(|s| s.megapixels).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.cpu_s).sum::<f64>() / n;
    let sxx: f64 = samples
        .iter()
        .map(|s| (s.megapixels - mean_x).powi(2))
        .sum();
    let sxy: f64 = samples
        .iter()
        .map(|s| (s.megapixels - mean_x) * (s.cpu_s - mean_y))
        .sum();
    if sxx <= f64::EPSILON * mean_x.abs().max(1.0) {
        return Err(FitError::OneSize(mean_x));
    }
    let b = sxy / sxx;
    let a = mean_y - b * mean_x;
    let total: f64 = samples.iter().map(|s| (s.cpu_s - mean_y).powi(2)).sum();
    let residual: f64 = samples
        .iter()
        .map(|s| (s.cpu_s - (a + b * s.megapixels)).powi(2))
        .sum();
    // Samples that all cost the same are explained perfectly by a flat line.
    let r_squared = if total == 0.0 {
        1.0
    } else {
        1.0 - residual / total
    };
    Ok(LinearFit {
        a,
        b,
        r_squared,
        samples: samples.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(points: &[(f64, f64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(megapixels, cpu_s)| Sample { megapixels, cpu_s })
            .collect()
    }

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-9
    }

    #[test]
    fn a_perfect_line_is_recovered_with_r_squared_one() {
        let line = fit(&samples(&[
            (1.0, 0.25),
            (2.0, 0.35),
            (4.0, 0.55),
            (12.0, 1.35),
        ]))
        .unwrap();
        assert!(close(line.a, 0.15), "a = {}", line.a);
        assert!(close(line.b, 0.10), "b = {}", line.b);
        assert!(close(line.r_squared, 1.0), "R² = {}", line.r_squared);
        assert_eq!(line.samples, 4);
        assert!(close(line.cpu_s(10.0), 1.15));
    }

    #[test]
    fn noisy_points_give_the_textbook_fit() {
        // x = 1..5, y = 2, 4, 5, 4, 5: slope 0.6, intercept 2.2, R² = 3.6 / 6 = 0.6.
        let line = fit(&samples(&[
            (1.0, 2.0),
            (2.0, 4.0),
            (3.0, 5.0),
            (4.0, 4.0),
            (5.0, 5.0),
        ]))
        .unwrap();
        assert!(close(line.b, 0.6), "b = {}", line.b);
        assert!(close(line.a, 2.2), "a = {}", line.a);
        assert!(close(line.r_squared, 0.6), "R² = {}", line.r_squared);
    }

    #[test]
    fn a_line_needs_two_sizes() {
        assert_eq!(
            fit(&samples(&[(3.0, 1.0)])),
            Err(FitError::TooFewSamples(1))
        );
        assert_eq!(
            fit(&samples(&[(3.0, 1.0), (3.0, 1.2)])),
            Err(FitError::OneSize(3.0))
        );
    }
}
