//! Prism's thumbnail stage against `vipsthumbnail` and Pillow, on large real images.
//!
//! `cargo bench -p prism-thumbnail --bench vs_libvips` (after `deploy/local/bench-thumbnail.sh`).
//! Every tool turns each image into JPEG q85 thumbnails of 128, 256 and 512 px (longest edge),
//! once with one worker and once with one worker per core; each worker is single-threaded
//! (VIPS_CONCURRENCY=1), and a lone worker is pinned to one core with taskset, so that no
//! library's helper threads borrow a second one. Prism's workers are threads of one child process of this binary (so its
//! peak RSS is its own), the other tools' workers are processes; peak RSS of parallel processes
//! is their sum. Wall time includes process start-up for every tool.
//! CPU ms/img is the user and system time of all of a tool's processes per image, which other
//! work on the machine hardly moves (wall time it does).
//! vipsthumbnail makes one size per run, so it decodes each image once per size; the row
//! "vips-512-only" (not a ratio's base) shows what one decode and the largest size cost it.
//! Quality guard: each Prism thumbnail against vipsthumbnail's of the same size (PSNR, SSIM).
//! Then the encoders alone, on the JPEG set's thumbnails: the stage's JPEG encoder
//! (libjpeg-turbo) against jpeg-encoder at equal settings, and libwebp at the stage's settings
//! against vips' webpsave defaults; speed, bytes, and SSIM against the pixels encoded.
//!
//! Environment: PRISM_HOME (cache root), PRISM_BENCH_ROUNDS (passes over each set, default 3),
//! PRISM_BENCH_FULL_DECODE=1 (Prism decodes at full size, without shrink-on-load, for comparison).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use prism_imaging::{Limits, decode, decode_for_thumbnails};
use prism_thumbnail::stage::{
    ThumbnailFormat, ThumbnailSpec, decode_for, encode_jpeg, fit_within, psnr, render,
};

const SIZES: [u32; 3] = [128, 256, 512];
const JPEG_QUALITY: u8 = 85;
const SETUP: &str = "run deploy/local/bench-thumbnail.sh first";
/// Below this a Prism thumbnail is visibly different from vipsthumbnail's and the bench fails.
const MIN_SSIM: f64 = 0.95;

/// The images of one kind, benchmarked together.
struct ImageSet {
    name: &'static str,
    files: &'static [&'static str],
}

const SETS: [ImageSet; 3] = [
    ImageSet {
        name: "JPEG 14.7 MP x6",
        files: &[
            "flow.jpg",
            "flow-dark.jpg",
            "honeywave.jpg",
            "shell.jpg",
            "safe-landing.jpg",
            "volna.jpg",
        ],
    },
    ImageSet {
        name: "PNG 14.7 MP",
        files: &["milky-way.png"],
    },
    ImageSet {
        name: "WebP 16.8 MP",
        files: &["adwaita.webp"],
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Prism,
    Vips,
    VipsLargestOnly,
    Pillow,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::Prism => "prism",
            Self::Vips => "vipsthumbnail",
            Self::VipsLargestOnly => "vips-512-only",
            Self::Pillow => "pillow",
        }
    }
}

#[derive(Clone, Copy)]
struct Measurement {
    images_per_second: f64,
    peak_rss_kib: u64,
    /// User and system CPU time per image, all processes and threads: unlike images/s, hardly
    /// moved by other work on the machine.
    cpu_ms_per_image: f64,
}

/// What Pillow runs: per size, draft (JPEG DCT scaling) then thumbnail with LANCZOS, as its
/// documentation recommends. argv: output dir, then the inputs.
const PILLOW_SCRIPT: &str = r#"
import os, sys
from PIL import Image
out = sys.argv[1]
for path in sys.argv[2:]:
    stem = os.path.splitext(os.path.basename(path))[0]
    for size in (128, 256, 512):
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            im.convert("RGB").save(f"{out}/{stem}_{size}.jpg", quality=85)
"#;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--prism-child") {
        return prism_child(&args[1..]);
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("vs_libvips: ERROR: {message}");
            ExitCode::FAILURE
        }
    }
}

fn cache_dir() -> PathBuf {
    env::var_os("PRISM_HOME").map_or_else(
        || PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cache/prism"),
        PathBuf::from,
    )
}

/// Benchmarks every set with every tool; returns whether the quality guard held.
fn run() -> Result<bool, String> {
    let cache = cache_dir();
    let images_dir = cache.join("bench-images");
    let python = cache.join("venv-pillow/bin/python");
    for tool in [
        Path::new("/usr/bin/time"),
        Path::new("/usr/bin/taskset"),
        &python,
    ] {
        if !tool.exists() {
            return Err(format!("{} is missing: {SETUP}", tool.display()));
        }
    }
    if Command::new("vipsthumbnail")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(format!("vipsthumbnail is not on PATH: {SETUP}"));
    }
    for file in SETS.iter().flat_map(|set| set.files) {
        if !images_dir.join(file).exists() {
            return Err(format!(
                "{} is missing: {SETUP}",
                images_dir.join(file).display()
            ));
        }
    }
    let rounds: usize = env::var("PRISM_BENCH_ROUNDS")
        .ok()
        .map_or(Ok(3), |r| r.parse())
        .map_err(|e| format!("PRISM_BENCH_ROUNDS: {e}"))?;
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let scratch = env::temp_dir().join(format!("prism-vs-libvips-{}", std::process::id()));

    let decoding = if env::var_os("PRISM_BENCH_FULL_DECODE").is_some_and(|v| v == "1") {
        "full-size decode"
    } else {
        "shrink-on-load"
    };
    println!(
        "thumbnails {SIZES:?} px, JPEG q{JPEG_QUALITY}, {rounds} rounds, Prism with {decoding}; \
         images/s counts source images (all sizes each)"
    );
    println!(
        "{:<16} {:>7} {:<14} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "set", "workers", "tool", "images/s", "RSS MiB", "speed/vips", "RSS/vips", "CPU ms/img"
    );
    for set in &SETS {
        let inputs: Vec<PathBuf> = set.files.iter().map(|f| images_dir.join(f)).collect();
        for workers in [1, cores] {
            let mut vips = None;
            for tool in [Tool::Vips, Tool::Prism, Tool::Pillow, Tool::VipsLargestOnly] {
                let out = scratch.join(tool.name());
                fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
                let m = measure(tool, &inputs, rounds, workers, &out, &python)?;
                let vips_m = *vips.get_or_insert(m);
                println!(
                    "{:<16} {:>7} {:<14} {:>9.2} {:>9.1} {:>9.2}x {:>8.2}x {:>11.0}",
                    set.name,
                    workers,
                    tool.name(),
                    m.images_per_second,
                    m.peak_rss_kib as f64 / 1024.0,
                    m.images_per_second / vips_m.images_per_second,
                    m.peak_rss_kib as f64 / vips_m.peak_rss_kib as f64,
                    m.cpu_ms_per_image,
                );
            }
        }
    }

    println!("\nquality: Prism thumbnail vs vipsthumbnail's of the same size");
    println!(
        "{:<18} {:>5} {:>11} {:>9} {:>7}",
        "image", "size", "dimensions", "PSNR dB", "SSIM"
    );
    let mut guard_held = true;
    for file in SETS.iter().flat_map(|set| set.files) {
        let stem = Path::new(file).file_stem().unwrap().to_string_lossy();
        for size in SIZES {
            let name = format!("{stem}_{size}.jpg");
            let ours = read_rgb(&scratch.join("prism").join(&name))?;
            let theirs = read_rgb(&scratch.join("vipsthumbnail").join(&name))?;
            let (w, h) = ours.dimensions();
            if theirs.dimensions() != (w, h) {
                println!(
                    "{file:<18} {size:>5} {w}x{h} vs vips {:?}: DIFFERENT SIZE",
                    theirs.dimensions()
                );
                guard_held = false;
                continue;
            }
            let similarity = ssim(&luma(&ours), &luma(&theirs));
            let low = similarity < MIN_SSIM;
            guard_held &= !low;
            println!(
                "{file:<18} {size:>5} {:>11} {:>9.2} {:>7.4}{}",
                format!("{w}x{h}"),
                psnr(&ours, &theirs),
                similarity,
                if low { "  BELOW GUARD" } else { "" }
            );
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    compare_encoders(&images_dir, rounds)?;
    if !guard_held {
        eprintln!("vs_libvips: quality guard failed: SSIM below {MIN_SSIM} or sizes differ");
    }
    Ok(guard_held)
}

/// Runs `tool` over `rounds` passes of `inputs` with `workers` workers, writing thumbnails
/// named STEM_SIZE.jpg into `out`.
fn measure(
    tool: Tool,
    inputs: &[PathBuf],
    rounds: usize,
    workers: usize,
    out: &Path,
    python: &Path,
) -> Result<Measurement, String> {
    let jobs: Vec<&PathBuf> = (0..rounds).flat_map(|_| inputs).collect();
    // One command per worker, each with its share of the jobs, dealt round-robin.
    let shares: Vec<Vec<&PathBuf>> = (0..workers)
        .map(|w| jobs.iter().skip(w).step_by(workers).copied().collect())
        .collect();
    let commands: Vec<Vec<Command>> = match tool {
        Tool::Prism => {
            let mut child = Command::new(env::current_exe().map_err(|e| e.to_string())?);
            child.arg("--prism-child").arg(workers.to_string()).arg(out);
            child.args(&jobs);
            vec![vec![child]]
        }
        Tool::Vips | Tool::VipsLargestOnly => shares
            .iter()
            .map(|share| {
                // vipsthumbnail makes one size per run, so each worker runs once per size.
                let sizes = if tool == Tool::Vips {
                    &SIZES[..]
                } else {
                    &SIZES[SIZES.len() - 1..]
                };
                sizes
                    .iter()
                    .map(|size| {
                        let mut vips = Command::new("vipsthumbnail");
                        // No operation cache: it would serve the later rounds' repeats from
                        // memory, which Prism's workers do not get either.
                        vips.env("VIPS_CONCURRENCY", "1")
                            .arg("--vips-cache-max=0")
                            .arg("--size")
                            .arg(size.to_string())
                            .arg("-o")
                            .arg(format!(
                                "{}/%s_{size}.jpg[Q={JPEG_QUALITY},strip]",
                                out.display()
                            ))
                            .args(share);
                        vips
                    })
                    .collect()
            })
            .collect(),
        Tool::Pillow => shares
            .iter()
            .map(|share| {
                let mut pillow = Command::new(python);
                pillow.arg("-c").arg(PILLOW_SCRIPT).arg(out).args(share);
                vec![pillow]
            })
            .collect(),
    };

    let started = Instant::now();
    // Each worker runs its commands in sequence, under /usr/bin/time for the peak RSS and CPU.
    let usages: Vec<Result<Usage, String>> = thread::scope(|scope| {
        let handles: Vec<_> = commands
            .into_iter()
            .enumerate()
            .map(|(worker, sequence)| {
                scope.spawn(move || {
                    let mut total = Usage::default();
                    for (step, command) in sequence.into_iter().enumerate() {
                        let usage_file = out.join(format!(".usage-{worker}-{step}"));
                        let usage = run_timed(command, &usage_file, workers == 1)?;
                        total.peak_rss_kib = total.peak_rss_kib.max(usage.peak_rss_kib);
                        total.cpu_seconds += usage.cpu_seconds;
                    }
                    Ok(total)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let usages = usages.into_iter().collect::<Result<Vec<Usage>, String>>()?;
    Ok(Measurement {
        images_per_second: jobs.len() as f64 / elapsed,
        peak_rss_kib: usages.iter().map(|u| u.peak_rss_kib).sum(),
        cpu_ms_per_image: usages.iter().map(|u| u.cpu_seconds).sum::<f64>() * 1000.0
            / jobs.len() as f64,
    })
}

/// What /usr/bin/time reports of a command.
#[derive(Default)]
struct Usage {
    peak_rss_kib: u64,
    /// User plus system time.
    cpu_seconds: f64,
}

/// Runs `command` under `/usr/bin/time`, failing loudly on a non-zero exit; returns its peak RSS
/// and CPU time. With `one_core`, pinned to CPU 0.
fn run_timed(command: Command, usage_file: &Path, one_core: bool) -> Result<Usage, String> {
    let program = command.get_program().to_owned();
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("%M %U %S").arg("-o").arg(usage_file);
    if one_core {
        timed.args(["/usr/bin/taskset", "--cpu-list", "0"]);
    }
    timed.arg(&program);
    timed.args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        }
    }
    let output = timed
        .output()
        .map_err(|e| format!("running {}: {e}", program.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            program.to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = fs::read_to_string(usage_file).map_err(|e| e.to_string())?;
    let parse = || -> Option<Usage> {
        let mut fields = text.lines().last()?.split_whitespace();
        let peak_rss_kib = fields.next()?.parse().ok()?;
        let user: f64 = fields.next()?.parse().ok()?;
        let system: f64 = fields.next()?.parse().ok()?;
        Some(Usage {
            peak_rss_kib,
            cpu_seconds: user + system,
        })
    };
    parse().ok_or_else(|| format!("/usr/bin/time wrote no peak RSS and CPU times: {text:?}"))
}

/// The child process: `--prism-child WORKERS OUT_DIR INPUT...`, the stage in-process.
fn prism_child(args: &[String]) -> ExitCode {
    let [workers, out, inputs @ ..] = args else {
        eprintln!("usage: vs_libvips --prism-child WORKERS OUT_DIR INPUT...");
        return ExitCode::FAILURE;
    };
    let workers: usize = workers.parse().expect("WORKERS is a number");
    let out = Path::new(out);
    let spec = ThumbnailSpec {
        sizes: SIZES.to_vec(),
        formats: vec![ThumbnailFormat::Jpeg],
        jpeg_quality: JPEG_QUALITY,
        ..ThumbnailSpec::default()
    };
    let full_decode = env::var_os("PRISM_BENCH_FULL_DECODE").is_some_and(|v| v == "1");
    let next = AtomicUsize::new(0);
    let failures = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut failures = 0;
                    while let Some(input) = inputs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let rendered = fs::read(input)
                            .map_err(|e| e.to_string())
                            .and_then(|bytes| {
                                let limits = Limits::default();
                                let decoded = if full_decode {
                                    decode(&bytes, &limits)
                                } else {
                                    decode_for(&spec, &bytes, &limits)
                                };
                                decoded.map_err(|e| e.to_string())
                            })
                            .and_then(|image| render(&image, &spec).map_err(|e| e.to_string()));
                        let stem = Path::new(input).file_stem().unwrap().to_string_lossy();
                        match rendered {
                            Ok(thumbnails) => {
                                for t in thumbnails {
                                    let path = out.join(format!("{stem}_{}.jpg", t.size));
                                    fs::write(&path, &t.bytes).expect("writes the thumbnail");
                                }
                            }
                            Err(e) => {
                                eprintln!("{input}: {e}");
                                failures += 1;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>()
    });
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One encoder under comparison: its name and what it makes of an RGB image.
struct Encoder {
    name: &'static str,
    encode: fn(&RgbImage) -> Vec<u8>,
}

fn jpeg_encoder_q85(rgb: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    // 4:2:0 below quality 90 by default, standard Huffman tables: as the stage's encoder.
    jpeg_encoder::Encoder::new(&mut bytes, JPEG_QUALITY)
        .encode(
            rgb.as_raw(),
            rgb.width() as u16,
            rgb.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("jpeg-encoder encodes a thumbnail");
    bytes
}

fn webp_lossy(rgb: &RgbImage, quality: f32, method: i32) -> Vec<u8> {
    let mut config = webp::WebPConfig::new().expect("libwebp's default config");
    config.quality = quality;
    config.method = method;
    webp::Encoder::from_rgb(rgb, rgb.width(), rgb.height())
        .encode_advanced(&config)
        .expect("libwebp encodes a thumbnail")
        .to_vec()
}

const ENCODERS: [Encoder; 5] = [
    Encoder {
        name: "libjpeg-turbo q85 4:2:0 (stage)",
        encode: |rgb| encode_jpeg(rgb, JPEG_QUALITY).expect("encodes"),
    },
    Encoder {
        name: "jpeg-encoder q85 4:2:0",
        encode: jpeg_encoder_q85,
    },
    Encoder {
        name: "libwebp q80 method 4 (stage)",
        encode: |rgb| webp_lossy(rgb, 80.0, 4),
    },
    Encoder {
        name: "libwebp q75 method 4 (vips)",
        encode: |rgb| webp_lossy(rgb, 75.0, 4),
    },
    Encoder {
        name: "libwebp q80 method 2",
        encode: |rgb| webp_lossy(rgb, 80.0, 2),
    },
];

/// Times each of [`ENCODERS`] over the thumbnails of the JPEG set (made once with Lanczos3,
/// not timed), `rounds` passes on this thread, and compares what they make.
fn compare_encoders(images_dir: &Path, rounds: usize) -> Result<(), String> {
    let mut thumbnails = Vec::new();
    for file in SETS[0].files {
        let path = images_dir.join(file);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let largest = SIZES[SIZES.len() - 1];
        let source = decode_for_thumbnails(&bytes, &Limits::default(), largest)
            .map_err(|e| format!("{file}: {e}"))?;
        let (width, height) = (source.full_width(), source.full_height());
        let source = source.into_rgb();
        for size in SIZES {
            let (w, h) = fit_within(width, height, size);
            thumbnails.push(image::imageops::resize(&source, w, h, FilterType::Lanczos3));
        }
    }
    let megapixels: f64 = thumbnails
        .iter()
        .map(|t| f64::from(t.width() * t.height()) / 1e6)
        .sum();
    println!(
        "\nencoders: {} thumbnails of {SIZES:?} px ({megapixels:.2} MP), {rounds} rounds, one thread",
        thumbnails.len()
    );
    println!(
        "{:<32} {:>12} {:>9} {:>11} {:>7}",
        "encoder", "thumbnails/s", "MP/s", "total KiB", "SSIM"
    );
    for encoder in &ENCODERS {
        let started = Instant::now();
        for _ in 0..rounds {
            for thumbnail in &thumbnails {
                std::hint::black_box((encoder.encode)(thumbnail));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let encoded: Vec<Vec<u8>> = thumbnails.iter().map(|t| (encoder.encode)(t)).collect();
        let total_bytes: usize = encoded.iter().map(Vec::len).sum();
        let mut similarity = 0.0;
        for (thumbnail, bytes) in thumbnails.iter().zip(&encoded) {
            let decoded = image::load_from_memory(bytes)
                .map_err(|e| format!("{}: {e}", encoder.name))?
                .into_rgb8();
            similarity += ssim(&luma(thumbnail), &luma(&decoded));
        }
        println!(
            "{:<32} {:>12.1} {:>9.1} {:>11.1} {:>7.4}",
            encoder.name,
            (rounds * thumbnails.len()) as f64 / seconds,
            rounds as f64 * megapixels / seconds,
            total_bytes as f64 / 1024.0,
            similarity / thumbnails.len() as f64,
        );
    }
    Ok(())
}

fn read_rgb(path: &Path) -> Result<RgbImage, String> {
    Ok(image::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_rgb8())
}

/// BT.601 luma, as SSIM is usually computed on.
fn luma(rgb: &RgbImage) -> GrayImage {
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb[(x, y)].0;
        let y = 0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b);
        image::Luma([y.round() as u8])
    })
}

/// Mean SSIM over 8x8 windows with stride 4 (Wang et al. 2004 constants).
fn ssim(a: &GrayImage, b: &GrayImage) -> f64 {
    const WINDOW: u32 = 8;
    const STRIDE: usize = 4;
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (w, h) = a.dimensions();
    if w < WINDOW || h < WINDOW {
        return if a == b { 1.0 } else { 0.0 };
    }
    let mut total = 0.0;
    let mut windows = 0u32;
    for y0 in (0..=h - WINDOW).step_by(STRIDE) {
        for x0 in (0..=w - WINDOW).step_by(STRIDE) {
            let pairs = (y0..y0 + WINDOW).flat_map(|y| {
                (x0..x0 + WINDOW)
                    .map(move |x| (f64::from(a[(x, y)].0[0]), f64::from(b[(x, y)].0[0])))
            });
            let n = f64::from(WINDOW * WINDOW);
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (p, q) in pairs {
                sa += p;
                sb += q;
                saa += p * p;
                sbb += q * q;
                sab += p * q;
            }
            let (ma, mb) = (sa / n, sb / n);
            let (va, vb, cov) = (saa / n - ma * ma, sbb / n - mb * mb, sab / n - ma * mb);
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            windows += 1;
        }
    }
    total / f64::from(windows)
}
