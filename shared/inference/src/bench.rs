//! What the `*_vs_onnxruntime` benchmarks of the models share: the rounds, Prism's timing loop,
//! and the side-by-side table. Each benchmark brings its own model and onnxruntime script.

use std::path::PathBuf;
use std::time::Instant;

use crate::prism_home;

/// Images per batch in the throughput row.
pub const BATCH: usize = 8;
/// Rounds unless `BENCH_ITERATIONS` says otherwise.
const DEFAULT_ITERATIONS: usize = 10;

/// The number of rounds: `BENCH_ITERATIONS`, or 10.
pub fn iterations() -> Result<usize, String> {
    match std::env::var("BENCH_ITERATIONS") {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("BENCH_ITERATIONS must be a number, not {value:?}")),
        Err(_) => Ok(DEFAULT_ITERATIONS),
    }
}

/// The Python of the venv with onnxruntime that `fetch-assets.sh --onnxruntime` makes.
pub fn onnxruntime_python() -> Result<PathBuf, String> {
    let python = prism_home().join("venv-onnxruntime/bin/python");
    if python.is_file() {
        Ok(python)
    } else {
        Err(format!(
            "{} is missing: run deploy/local/fetch-assets.sh --onnxruntime",
            python.display()
        ))
    }
}

/// Medians, in milliseconds: one image at a time, and a whole batch of [`BATCH`].
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub batch1_ms: f64,
    pub batch_ms: f64,
}

/// Times `run` on each image alone, then on batches of [`BATCH`] of them (cycled), `iterations`
/// rounds of each, after one warm-up run (first-touch allocations).
pub fn time_batches<T: Clone, E>(
    images: &[T],
    iterations: usize,
    mut run: impl FnMut(&[T]) -> Result<(), E>,
) -> Result<Timings, E> {
    run(&images[..1])?;
    let mut timed = |images: &[T]| -> Result<f64, E> {
        let start = Instant::now();
        run(images)?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    let mut latencies = Vec::new();
    for _ in 0..iterations {
        for image in images {
            latencies.push(timed(std::slice::from_ref(image))?);
        }
    }
    let batch: Vec<T> = images.iter().cycle().take(BATCH).cloned().collect();
    let mut batch_times = Vec::new();
    for _ in 0..iterations {
        batch_times.push(timed(&batch)?);
    }
    Ok(Timings {
        batch1_ms: median(&mut latencies),
        batch_ms: median(&mut batch_times),
    })
}

/// Prints `title` and the two rows (batch-1 latency, batch throughput), Prism against
/// `runtime`, with the ratio. Both sides run on rayon's thread count (`RAYON_NUM_THREADS`,
/// default one per core): the benchmarks pass it to onnxruntime as its intra-op threads.
pub fn print_table(title: &str, prism: Timings, runtime: &str, other: Timings) {
    println!(
        "{title}, {} threads each side, load average {}\n",
        rayon::current_num_threads(),
        load_average()
    );
    println!("{:<34} {:>16} {:>18} {:>8}", "", "Prism", runtime, "ratio");
    let row = |label: &str, prism: f64, other: f64| {
        println!(
            "{label:<34} {prism:>16.1} {other:>18.1} {:>7.2}x",
            prism / other
        );
    };
    row(
        "batch 1 latency (ms/image)",
        prism.batch1_ms,
        other.batch1_ms,
    );
    let throughput = |batch_ms: f64| BATCH as f64 * 1000.0 / batch_ms;
    row(
        &format!("batch {BATCH} throughput (images/s)"),
        throughput(prism.batch_ms),
        throughput(other.batch_ms),
    );
}

/// The 1-minute load average, as `/proc/loadavg` says (the machine may be shared), or "unknown".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
