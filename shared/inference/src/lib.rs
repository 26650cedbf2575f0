//! Prism's CPU inference: the kernels its models are built from ([`kernels`]) and where the
//! fetched weights live ([`prism_home`]). Each model (YOLOv8n in prism-detect,
//! EfficientNet-Lite0 in prism-classify) loads its own weights and wires these kernels together;
//! nothing here knows a model, an image format or a message.

// SIMD intrinsics and uninitialised output buffers: the one place Prism needs unsafe code.
#[cfg(feature = "bench")]
pub mod bench;
#[allow(unsafe_code)]
pub mod channels_last;
#[allow(unsafe_code)]
pub mod kernels;
#[allow(unsafe_code)]
mod matmul;
#[allow(unsafe_code)]
mod simd;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Runs `work` on a thread of rayon's global pool and waits for it, the pool's other threads
/// kept looking for its tasks meanwhile.
///
/// Why: a model's parallel loops started from any other thread (a batch of one image runs on
/// its caller's thread) would each be handed to the pool and waited for, a wake-up and a sleep
/// per layer, about a fifth of the time at batch 1. And between two layers a worker that has
/// finished its share soon goes to sleep, to be woken for the next layer's (tens of
/// microseconds in a VM, a hundred layers an image); onnxruntime's threads spin for the same
/// reason (measured on EfficientNet-Lite0, 2 cores).
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| keep_stealing(&done));
        }
        let result = work();
        done.store(true, Ordering::Release);
        result
    })
}

/// How long a helper of [`on_pool`] looks for work that does not come before it gives up: longer
/// than the gap between two layers, short enough that a helper the working thread itself picked
/// up (it may, while it waits for a task of its own) costs it little.
const IDLE_LIMIT: Duration = Duration::from_millis(2);

/// Runs the pool's pending tasks until `done`, or until none came for [`IDLE_LIMIT`].
fn keep_stealing(done: &AtomicBool) {
    let mut last_work = Instant::now();
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last_work = Instant::now(),
            _ if last_work.elapsed() > IDLE_LIMIT => return,
            // Not a sleep, but the core goes to any other thread that wants it.
            _ => std::thread::yield_now(),
        }
    }
}

/// A fetched file's sha256 in hex, as the configuration pins it: a model refuses other weights.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Reads a model's fetched file (weights, labels) whole; the error, built by `missing` when there
/// is no such file (fetch-assets.sh has not run) and by `unreadable` otherwise, is the model's.
pub fn read_model_file<E>(
    path: &Path,
    missing: impl FnOnce(PathBuf) -> E,
    unreadable: impl FnOnce(PathBuf, std::io::Error) -> E,
) -> Result<Vec<u8>, E> {
    std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => missing(path.to_owned()),
        _ => unreadable(path.to_owned(), error),
    })
}

/// The runtime cache (`$PRISM_HOME`, default `$HOME/.cache/prism`) that
/// `deploy/local/fetch-assets.sh` fills with weights and sample images.
pub fn prism_home() -> PathBuf {
    match std::env::var_os("PRISM_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => std::env::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/prism"),
    }
}
