//! Hostile and broken inputs through the real pipeline code, in the embedded mode (`prism run`): no
//! servers, the same dedup, stage workers and consumer loop as the services.
//!
//! Each test builds its inputs here, next to a good image, runs the `prism` binary over them and
//! asserts that it exits 0, that every input ends with exactly one result or one dead letter per
//! stage (with a stable code and a reason a person can act on), that the good image still gets its
//! thumbnails, and that the child's peak RSS stays under [`MAX_PEAK_RSS_KIB`].
//!
//! Keys with `../` segments cannot exist as files in a folder, so the embedded mode can never see
//! them; the store refuses them (`unsupported_key`), covered by the unit tests in
//! `shared/core/src/ports/store.rs`.

// wait4 reports the child's peak RSS exactly; std has no safe wrapper for it.
#![allow(unsafe_code)]

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use prism_core::contract::schemas::{MessageKind, Schemas};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A run over a handful of small files takes well under a second; this only catches a hang (an
/// upload that never gets its outcome) or a decoder that walks thousands of GIF frames.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// Peak RSS allowed for one run. Measured here: 17-19 MiB for a thumbnail run over small files,
/// 46 MiB with the GIF (its 1500x1500 canvas is 9 MiB of RGBA, then resized), 234 MiB with detect
/// (YOLOv8n's weights and activations). Decoding any of the bombs instead of refusing it would
/// cost gigabytes (50000x50000 pixels is 7.5 GB of RGB; 3000 GIF frames coalesced on that canvas
/// are 27 GB), so 512 MiB, about twice the detect run, passes any sane run and fails every one of
/// those at once.
const MAX_PEAK_RSS_KIB: u64 = 512 * 1024;

const GOOD_KEY: &str = "good neighbour.jpg";

/// What an input must end as.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A result for every stage, the image as displayed at this size.
    Processed { width: u32, height: u32 },
    /// A dead letter with `code` from every stage.
    DeadLettered { code: &'static str },
    /// One dead letter from dedup with `code`, standing for every stage: no stage sees it.
    RefusedByDedup { code: &'static str },
}

struct Input {
    key: String,
    bytes: Vec<u8>,
    expect: Expect,
}

impl Input {
    fn new(key: &str, bytes: Vec<u8>, expect: Expect) -> Self {
        Input {
            key: key.to_string(),
            bytes,
            expect,
        }
    }
}

/// What one `prism run` did.
struct Run {
    out: PathBuf,
    messages: Vec<Value>,
    logs: String,
    peak_rss_kib: u64,
}

/// A folder under the system temp dir, removed when the test passes (kept for a look when it fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(case: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "prism-hostile-{case}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Waits for `child` to exit, at most `deadline`: its exit status and peak resident set in KiB
/// (`ru_maxrss` from wait4, exact to the end, where sampling /proc misses a run that ends between
/// two samples), or None once it has been killed at the deadline.
fn wait_with_peak_rss(mut child: Child, deadline: Duration) -> Option<(ExitStatus, u64)> {
    let started = Instant::now();
    let pid = i32::try_from(child.id()).unwrap();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain integers, for which all zeroes is valid; wait4 only writes to
        // the two locals it is handed. Once reaped here, the child is never waited for again.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            let peak = u64::try_from(usage.ru_maxrss).unwrap();
            return Some((ExitStatus::from_raw(status), peak));
        }
        if started.elapsed() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `inputs` into a fresh folder and runs `prism run` over it, measuring its peak RSS.
fn run_prism(case: &str, inputs: &[Input], stages: &str, env: &[(&str, &str)]) -> (Scratch, Run) {
    run_prism_with_links(case, inputs, &[], stages, env)
}

/// [`run_prism`] with symbolic links (name in the folder, target) beside the inputs.
fn run_prism_with_links(
    case: &str,
    inputs: &[Input],
    links: &[(&str, &Path)],
    stages: &str,
    env: &[(&str, &str)],
) -> (Scratch, Run) {
    let scratch = Scratch::new(case);
    let input_dir = scratch.0.join("in");
    let out = scratch.0.join("out");
    for input in inputs {
        let path = input_dir.join(&input.key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &input.bytes).unwrap();
    }
    for (name, target) in links {
        std::os::unix::fs::symlink(target, input_dir.join(name)).unwrap();
    }
    let log_path = scratch.0.join("prism.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let child = Command::new(prism_e2e::prism_binary())
        .arg("run")
        .arg(&input_dir)
        .arg("--out")
        .arg(&out)
        .args(["--stages", stages])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("cannot start prism");
    let Some((status, peak)) = wait_with_peak_rss(child, RUN_DEADLINE) else {
        panic!(
            "{case}: prism run did not finish within {RUN_DEADLINE:?}:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    };
    let elapsed = started.elapsed();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        status.success(),
        "{case}: prism run exited {status}:\n{logs}"
    );
    let results = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap_or_else(|e| panic!("{case}: no results.jsonl ({e}):\n{logs}"));
    let schemas = Schemas::default();
    let messages = results
        .lines()
        .map(|line| {
            let message: Value = serde_json::from_str(line).unwrap();
            let kind = if message.get("error").is_some() {
                MessageKind::DeadLetter
            } else {
                MessageKind::Result
            };
            schemas
                .check_bytes(kind, line.as_bytes())
                .unwrap_or_else(|e| panic!("{case}: {kind:?} breaks its schema: {e}\n{line}"));
            message
        })
        .collect();
    println!(
        "{case}: {} inputs, peak RSS {:.1} MiB, {:.2} s",
        inputs.len(),
        peak as f64 / 1024.0,
        elapsed.as_secs_f64()
    );
    let run = Run {
        out,
        messages,
        logs,
        peak_rss_kib: peak,
    };
    (scratch, run)
}

/// Every input ended as expected, exactly once per stage; nothing else was said; memory stayed bounded.
fn assert_outcomes(case: &str, inputs: &[Input], stages: &[&str], run: &Run) {
    assert!(
        run.peak_rss_kib < MAX_PEAK_RSS_KIB,
        "{case}: peak RSS {} KiB is over the bound of {MAX_PEAK_RSS_KIB} KiB",
        run.peak_rss_kib
    );
    let mut by_key: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for message in &run.messages {
        let key = message["source"]["key"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: message without a source key: {message}"));
        by_key.entry(key).or_default().push(message);
    }
    for key in by_key.keys() {
        assert!(
            inputs.iter().any(|i| i.key == *key),
            "{case}: outcome for {key:?}, which is not an input (keys must come back unchanged)"
        );
    }
    for input in inputs {
        let about = format!("{case}: {:?}", input.key);
        let got = by_key.get(input.key.as_str()).cloned().unwrap_or_default();
        match input.expect {
            Expect::RefusedByDedup { code } => {
                assert_eq!(got.len(), 1, "{about}: one dedup dead letter: {got:?}");
                assert_dead_letter(&about, got[0], "dedup", code);
            }
            Expect::DeadLettered { code } => {
                assert_eq!(got.len(), stages.len(), "{about}: one per stage: {got:?}");
                for stage in stages {
                    let letter = got
                        .iter()
                        .find(|m| m["stage"] == *stage)
                        .unwrap_or_else(|| panic!("{about}: no {stage} outcome: {got:?}"));
                    assert_dead_letter(&about, letter, stage, code);
                }
            }
            Expect::Processed { width, height } => {
                assert_eq!(got.len(), stages.len(), "{about}: one per stage: {got:?}");
                for stage in stages {
                    let result = got
                        .iter()
                        .find(|m| m["stage"] == *stage)
                        .unwrap_or_else(|| panic!("{about}: no {stage} outcome: {got:?}"));
                    assert!(result.get("error").is_none(), "{about}: {result}");
                    assert_eq!(
                        (&result["image"]["width"], &result["image"]["height"]),
                        (&Value::from(width), &Value::from(height)),
                        "{about}: {stage} saw the wrong size"
                    );
                    assert_outputs_exist(&about, &run.out, result);
                }
            }
        }
    }
}

fn assert_dead_letter(about: &str, letter: &Value, stage: &str, code: &str) {
    assert_eq!(letter["stage"], stage, "{about}: {letter}");
    assert_eq!(letter["error"]["code"], code, "{about}: {letter}");
    let reason = letter["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.len() > 20,
        "{about}: a reason a person can act on: {letter}"
    );
}

/// Every output a result names is on disk, at the size it claims.
fn assert_outputs_exist(about: &str, out: &Path, result: &Value) {
    let outputs = result["outputs"].as_array().unwrap();
    assert!(!outputs.is_empty(), "{about}: no outputs: {result}");
    for output in outputs {
        let path = out.join(output["key"].as_str().unwrap());
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{about}: output {} missing: {e}", path.display()))
            .len();
        assert_eq!(
            Value::from(size),
            output["bytes"],
            "{about}: {}",
            path.display()
        );
    }
}

/// Runs one hostile input next to a good image through the thumbnail stage.
fn hostile_case(case: &str, hostile: Input, env: &[(&str, &str)]) {
    let inputs = [hostile, good_neighbour()];
    let (_scratch, run) = run_prism(case, &inputs, "thumbnail", env);
    assert_outcomes(case, &inputs, &["thumbnail"], &run);
}

/// A picture no other call makes: gradients and stripes seeded by `seed`.
fn picture(seed: u32, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let stripe = ((x / (3 + seed % 5)) + (y / (4 + seed % 3))) % 2;
        Rgb([
            (x * 255 / width) as u8 ^ (seed as u8).wrapping_mul(41),
            (y * 255 / height) as u8,
            if stripe == 0 { 40 } else { 200 },
        ])
    })
}

fn encode(image: RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn good_neighbour() -> Input {
    Input::new(
        GOOD_KEY,
        encode(picture(1, 120, 80), ImageFormat::Jpeg),
        Expect::Processed {
            width: 120,
            height: 80,
        },
    )
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let mut covered = kind.to_vec();
    covered.extend_from_slice(data);
    chunk.extend_from_slice(&crc32(&covered).to_be_bytes());
    chunk
}

/// A PNG of a few dozen bytes whose header claims `width` x `height` RGB pixels.
fn pixel_bomb_png(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &header));
    // An empty zlib stream: the pixels that would follow are never there.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// Bits for a deflate stream: fields go in least significant bit first, Huffman codes most
/// significant bit first (RFC 1951, 3.1.1).
#[derive(Default)]
struct DeflateBits {
    bytes: Vec<u8>,
    used: u32,
}

impl DeflateBits {
    fn field(&mut self, value: u32, bits: u32) {
        for bit in 0..bits {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let last = self.bytes.last_mut().unwrap();
            *last |= u8::from(value >> bit & 1 == 1) << (self.used % 8);
            self.used += 1;
        }
    }

    fn code(&mut self, code: u32, bits: u32) {
        self.field(code.reverse_bits() >> (32 - bits), bits);
    }
}

/// A zlib stream of about a thousandth of `1 + 258 * copies` zero bytes that inflates to them: one
/// dynamic-Huffman block holding a literal 0, then `copies` times "copy 258 bytes from distance 1"
/// at two bits each.
fn zlib_bomb(copies: u32) -> Vec<u8> {
    // Huffman codes (code, bits) of the three alphabets, canonical for these code lengths.
    const LENGTH_ONE: (u32, u32) = (0b10, 2);
    const LENGTH_TWO: (u32, u32) = (0b11, 2);
    const ZEROS: (u32, u32) = (0b0, 1); // code length symbol 18: 11 to 138 zero lengths
    const LITERAL_ZERO: (u32, u32) = (0b10, 2);
    const END_OF_BLOCK: (u32, u32) = (0b11, 2);
    const LENGTH_258: (u32, u32) = (0b0, 1);
    const DISTANCE_1: (u32, u32) = (0b0, 1);

    let mut bits = DeflateBits::default();
    bits.field(1, 1); // the final block
    bits.field(2, 2); // dynamic Huffman
    bits.field(286 - 257, 5); // literal/length codes up to 285 (length 258)
    bits.field(2 - 1, 5); // two distance codes
    bits.field(18 - 4, 4); // code length code lengths, in their odd order, up to symbol 1
    // Order: 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1.
    for length in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        bits.field(length, 3);
    }
    let zeros = |bits: &mut DeflateBits, mut count: u32| {
        while count > 0 {
            let run = count.min(138);
            bits.code(ZEROS.0, ZEROS.1);
            bits.field(run - 11, 7);
            count -= run;
        }
    };
    // Literal 0 and end of block (256) take two bits, length 258 (285) one; distances 1 and 2 one.
    bits.code(LENGTH_TWO.0, LENGTH_TWO.1);
    zeros(&mut bits, 255);
    bits.code(LENGTH_TWO.0, LENGTH_TWO.1);
    zeros(&mut bits, 28);
    for _ in 0..3 {
        bits.code(LENGTH_ONE.0, LENGTH_ONE.1);
    }
    bits.code(LITERAL_ZERO.0, LITERAL_ZERO.1);
    for _ in 0..copies {
        bits.code(LENGTH_258.0, LENGTH_258.1);
        bits.code(DISTANCE_1.0, DISTANCE_1.1);
    }
    bits.code(END_OF_BLOCK.0, END_OF_BLOCK.1);

    let inflated = 1 + 258 * u64::from(copies);
    let adler32 = ((inflated % 65521) as u32) << 16 | 1; // sums of zero bytes
    let mut zlib = vec![0x78, 0x01];
    zlib.extend(bits.bytes);
    zlib.extend_from_slice(&adler32.to_be_bytes());
    zlib
}

/// `png` with `chunk` inserted right after its header chunk (IHDR is 8 + 25 bytes in).
fn with_chunk_after_header(png: &[u8], chunk: &[u8]) -> Vec<u8> {
    const HEADER_END: usize = 8 + 4 + 4 + 13 + 4;
    assert_eq!(&png[12..16], b"IHDR");
    [&png[..HEADER_END], chunk, &png[HEADER_END..]].concat()
}

/// `jpeg` with an APP1 segment holding `exif` (after the `Exif\0\0` marker) right after SOI.
fn with_exif_segment(jpeg: &[u8], exif: &[u8]) -> Vec<u8> {
    let length = u16::try_from(2 + 6 + exif.len()).expect("an APP1 segment holds < 64 KiB");
    let mut bytes = jpeg[..2].to_vec();
    bytes.extend_from_slice(&[0xFF, 0xE1]);
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(b"Exif\0\0");
    bytes.extend_from_slice(exif);
    bytes.extend_from_slice(&jpeg[2..]);
    bytes
}

/// A little-endian TIFF block: orientation 6 (rotate 90° clockwise) and an ImageDescription of
/// `description_bytes` repeated letters, which makes the EXIF block as large as an APP1 allows.
fn huge_exif(description_bytes: u32) -> Vec<u8> {
    const ENTRIES: u16 = 2;
    let data_offset = 8 + 2 + u32::from(ENTRIES) * 12 + 4;
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes()); // the first IFD follows the header
    tiff.extend_from_slice(&ENTRIES.to_le_bytes());
    // ImageDescription (0x010E), ASCII (2), count, offset of the text.
    tiff.extend_from_slice(&0x010Eu16.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&description_bytes.to_le_bytes());
    tiff.extend_from_slice(&data_offset.to_le_bytes());
    // Orientation (0x0112), SHORT (3), one value: 6, left-justified in the value field.
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&[6, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    tiff.extend((0..description_bytes - 1).map(|i| b"PRISM"[i as usize % 5]));
    tiff.push(0);
    tiff
}

/// A TIFF block that lies: a first IFD far past its end, then a count of 65535 entries.
fn corrupt_exif() -> Vec<u8> {
    let mut tiff = b"MM\0*".to_vec();
    tiff.extend_from_slice(&0xFFFF_FF00u32.to_be_bytes());
    tiff.extend_from_slice(&[0xFF, 0xFF, 0x01, 0x12, 0x00]);
    tiff
}

/// A GIF89a of `frames` frames on a `screen` x `screen` canvas, each frame a 4x4 patch. Tiny on
/// disk, enormous if every frame were coalesced onto the canvas. The image data uses 8-bit LZW
/// codes with a clear code before the table could grow, so every code is one byte.
fn animated_gif(screen: u16, frames: u32) -> Vec<u8> {
    const PATCH: u16 = 4;
    const CLEAR: u8 = 128; // with a minimum code size of 7
    const END: u8 = 129;
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&screen.to_le_bytes());
    gif.extend_from_slice(&screen.to_le_bytes());
    gif.extend_from_slice(&[0xF6, 0, 0]); // a global table of 128 colours, background 0
    gif.extend((0..128u8).flat_map(|i| [i * 2, 255 - i * 2, i]));
    gif.extend_from_slice(b"\x21\xFF\x0BNETSCAPE2.0\x03\x01\x00\x00\x00"); // loop forever
    for frame in 0..frames {
        gif.extend_from_slice(&[0x21, 0xF9, 4, 0x04, 1, 0, 0, 0]); // keep, 1/100 s
        let offset = (frame % u32::from(screen / PATCH)) as u16 * PATCH;
        gif.push(0x2C);
        for value in [offset, offset, PATCH, PATCH] {
            gif.extend_from_slice(&value.to_le_bytes());
        }
        gif.push(0); // no local table, not interlaced
        gif.push(7);
        let mut codes = vec![CLEAR];
        codes.extend((0..PATCH * PATCH).map(|i| ((frame + u32::from(i)) % 128) as u8));
        codes.push(END);
        gif.push(codes.len() as u8);
        gif.extend_from_slice(&codes);
        gif.push(0);
    }
    gif.push(0x3B);
    gif
}

#[test]
fn corrupt_jpeg_is_dead_lettered() {
    let mut corrupt = b"\xFF\xD8\xFF\xE0 this is not really a JPEG".to_vec();
    corrupt.extend((0..4000u32).map(|i| (i * 37 % 251) as u8));
    hostile_case(
        "corrupt_jpeg",
        Input::new(
            "corrupt.jpg",
            corrupt,
            Expect::DeadLettered {
                code: "corrupt_image",
            },
        ),
        &[],
    );
}

#[test]
fn truncated_png_is_dead_lettered() {
    let whole = encode(picture(2, 64, 64), ImageFormat::Png);
    hostile_case(
        "truncated_png",
        Input::new(
            "truncated.png",
            whole[..whole.len() / 2].to_vec(),
            Expect::DeadLettered {
                code: "corrupt_image",
            },
        ),
        &[],
    );
}

#[test]
fn zero_byte_file_is_dead_lettered() {
    hostile_case(
        "zero_bytes",
        Input::new(
            "empty.jpg",
            Vec::new(),
            Expect::DeadLettered {
                code: "empty_image",
            },
        ),
        &[],
    );
}

#[test]
fn text_file_named_jpg_is_dead_lettered() {
    hostile_case(
        "text_named_jpg",
        Input::new(
            "notes.jpg",
            b"Meeting notes\n- buy milk\n- ship Prism\n".to_vec(),
            Expect::DeadLettered {
                code: "unsupported_format",
            },
        ),
        &[],
    );
}

#[test]
fn tiny_png_claiming_50000_by_50000_pixels_is_dead_lettered_before_decoding() {
    let bomb = pixel_bomb_png(50_000, 50_000);
    assert!(bomb.len() < 100, "the bomb is {} bytes", bomb.len());
    hostile_case(
        "pixel_bomb",
        Input::new(
            "bomb.png",
            bomb,
            Expect::DeadLettered {
                code: "too_many_pixels",
            },
        ),
        &[],
    );
}

#[test]
fn jpeg_whose_header_claims_65535_by_65535_pixels_is_dead_lettered_before_decoding() {
    let mut jpeg = encode(picture(7, 32, 32), ImageFormat::Jpeg);
    let frame = jpeg
        .windows(2)
        .position(|marker| marker == [0xFF, 0xC0])
        .expect("a baseline JPEG has a SOF0 segment");
    // SOF0: marker, length (2), precision (1), height (2), width (2).
    jpeg[frame + 5..frame + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    hostile_case(
        "jpeg_pixel_bomb",
        Input::new(
            "bomb.jpg",
            jpeg,
            Expect::DeadLettered {
                code: "too_many_pixels",
            },
        ),
        &[],
    );
}

#[test]
fn png_with_compressed_metadata_inflating_to_a_gigabyte_is_processed_in_bounded_memory() {
    // About 1 MiB on disk, 1 GiB inflated: over any sane ICC profile or text.
    let bomb = zlib_bomb(1 << 22);
    let png = encode(picture(8, 64, 48), ImageFormat::Png);
    let icc = with_chunk_after_header(
        &png,
        &png_chunk(b"iCCP", &[b"bomb\0\0", &bomb[..]].concat()),
    );
    let text = with_chunk_after_header(
        &png,
        &png_chunk(b"zTXt", &[b"Comment\0\0", &bomb[..]].concat()),
    );
    let itext = with_chunk_after_header(
        &png,
        &png_chunk(b"iTXt", &[b"Comment\0\x01\0\0\0", &bomb[..]].concat()),
    );
    assert!(icc.len() < 2 << 20, "the bomb is {} bytes", icc.len());
    let processed = Expect::Processed {
        width: 64,
        height: 48,
    };
    let inputs = [
        Input::new("icc profile bomb.png", icc, processed),
        Input::new("ztxt bomb.png", text, processed),
        Input::new("itxt bomb.png", itext, processed),
        good_neighbour(),
    ];
    let (_scratch, run) = run_prism("png_metadata_bomb", &inputs, "thumbnail", &[]);
    assert_outcomes("png_metadata_bomb", &inputs, &["thumbnail"], &run);
}

/// A black `width` x `height` RGB PNG of a few dozen KiB, made without encoding any pixels: its
/// rows (a filter byte and zeros each) must add up to `1 + 258 * n` bytes for [`zlib_bomb`].
/// `tag` goes in a text chunk, so that equal images are still different uploads.
fn black_png(width: u32, height: u32, tag: &str) -> Vec<u8> {
    let rows = u64::from(height) * (1 + 3 * u64::from(width));
    assert_eq!(
        (rows - 1) % 258,
        0,
        "pick a size whose rows are 1 + 258 * n bytes"
    );
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &header));
    png.extend(png_chunk(b"tEXt", format!("Title\0{tag}").as_bytes()));
    png.extend(png_chunk(
        b"IDAT",
        &zlib_bomb(u32::try_from((rows - 1) / 258).unwrap()),
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// Fails, saying how to fetch it, when a model file is not in `$PRISM_HOME/models`.
fn assert_fetched(model_file: &str) {
    let home = std::env::var("PRISM_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::home_dir().unwrap().join(".cache/prism"));
    let path = home.join("models").join(model_file);
    assert!(
        path.is_file(),
        "{} is missing: run deploy/local/fetch-assets.sh (or set PRISM_HOME)",
        path.display()
    );
}

/// Eight 19.4 MP images (58 MB of RGB each) in one batch of `stage`, with the pixel limit just
/// above one: 465 MB of pixels at once would break the bound, one at a time keeps well under it.
fn a_batch_of_large_images_holds_one_at_a_time(stage: &str) {
    let (width, height) = (5000, 3877);
    let inputs: Vec<Input> = (0..8)
        .map(|index| {
            Input::new(
                &format!("large {index}.png"),
                black_png(width, height, &index.to_string()),
                Expect::Processed { width, height },
            )
        })
        .collect();
    let case = format!("{stage}_large_batch");
    // Time for all eight to gather into one batch.
    let max_delay = format!("PRISM_INTAKE__{}__MAX_DELAY", stage.to_uppercase());
    let (_scratch, run) = run_prism(
        &case,
        &inputs,
        stage,
        &[
            ("PRISM_STAGES__LIMITS__MAX_PIXELS", "20000000"),
            (&max_delay, "2000"),
        ],
    );
    assert_outcomes(&case, &inputs, &[stage], &run);
}

#[test]
fn a_detect_batch_of_large_images_holds_one_at_a_time() {
    assert_fetched("yolov8n.onnx");
    a_batch_of_large_images_holds_one_at_a_time("detect");
}

#[test]
fn a_classify_batch_of_large_images_holds_one_at_a_time() {
    assert_fetched("efficientnet-lite0.safetensors");
    a_batch_of_large_images_holds_one_at_a_time("classify");
}

#[test]
fn jpeg_with_a_huge_exif_block_is_processed_and_oriented() {
    let exif = huge_exif(60_000);
    let jpeg = with_exif_segment(&encode(picture(3, 90, 60), ImageFormat::Jpeg), &exif);
    hostile_case(
        "huge_exif",
        // Orientation 6 turns the stored 90x60 into 60x90 as displayed.
        Input::new(
            "huge exif.jpg",
            jpeg,
            Expect::Processed {
                width: 60,
                height: 90,
            },
        ),
        &[],
    );
}

#[test]
fn jpeg_with_a_corrupt_exif_block_is_processed_without_orientation() {
    let jpeg = with_exif_segment(
        &encode(picture(4, 90, 60), ImageFormat::Jpeg),
        &corrupt_exif(),
    );
    hostile_case(
        "corrupt_exif",
        Input::new(
            "corrupt exif.jpg",
            jpeg,
            Expect::Processed {
                width: 90,
                height: 60,
            },
        ),
        &[],
    );
}

#[test]
fn gif_with_thousands_of_frames_is_processed_from_its_first_frame() {
    let gif = animated_gif(1500, 3000);
    let started = Instant::now();
    hostile_case(
        "animated_gif",
        Input::new(
            "animation.gif",
            gif,
            Expect::Processed {
                width: 1500,
                height: 1500,
            },
        ),
        &[],
    );
    // Decoding 3000 frames would take far longer than one (and the deadline catches a hang).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn upload_over_the_byte_limit_is_dead_lettered_by_dedup_unread() {
    let limit = good_neighbour().bytes.len() + 1024;
    let big = encode(picture(5, 600, 400), ImageFormat::Png);
    assert!(big.len() > limit, "{} bytes is not over {limit}", big.len());
    let limit = limit.to_string();
    hostile_case(
        "over_byte_limit",
        Input::new(
            "big.png",
            big,
            Expect::RefusedByDedup {
                code: "too_many_bytes",
            },
        ),
        &[("PRISM_STAGES__LIMITS__MAX_BYTES", &limit)],
    );
}

#[test]
fn symbolic_links_out_of_the_input_folder_are_never_followed() {
    let case = "symlinks";
    let inputs = [good_neighbour()];
    let links = [
        ("passwd.jpg", Path::new("/etc/passwd")),
        ("etc", Path::new("/etc")),
    ];
    let (_scratch, run) = run_prism_with_links(case, &inputs, &links, "thumbnail", &[]);
    // No outcome names a link or anything under one: assert_outcomes refuses keys not in inputs.
    assert_outcomes(case, &inputs, &["thumbnail"], &run);
    assert!(
        run.logs.contains("2 entries not read"),
        "{case}: the summary counts both links:\n{}",
        run.logs
    );
    assert!(
        !run.logs.contains("root:x:0:0"),
        "{case}: /etc/passwd leaked into the logs"
    );
}

#[test]
fn keys_with_unicode_spaces_escapes_and_plus_come_back_unchanged() {
    let keys = [
        "ünïcødé/北京 夜景.jpg",
        "holiday photos/day 1/beach.jpg",
        "a%20b.jpg",
        "a%2Fb%2Fc.jpg",
        "100%.jpg",
        "plus+sign+.jpg",
        "+.jpg",
        "emoji 📷/ß.jpg",
    ];
    let mut inputs: Vec<Input> = keys
        .iter()
        .zip(10..)
        .map(|(key, seed)| {
            Input::new(
                key,
                encode(picture(seed, 48, 32), ImageFormat::Jpeg),
                Expect::Processed {
                    width: 48,
                    height: 32,
                },
            )
        })
        .collect();
    inputs.push(good_neighbour());
    let (_scratch, run) = run_prism("keys", &inputs, "thumbnail", &[]);
    assert_outcomes("keys", &inputs, &["thumbnail"], &run);
}

/// Every hostile input above (but the byte limit, which needs its own setting) in one folder.
fn hostile_inputs() -> Vec<Input> {
    let whole_png = encode(picture(2, 64, 64), ImageFormat::Png);
    vec![
        Input::new(
            "corrupt.jpg",
            b"\xFF\xD8\xFF\xE0 not a JPEG at all".repeat(100),
            Expect::DeadLettered {
                code: "corrupt_image",
            },
        ),
        Input::new(
            "truncated.png",
            whole_png[..whole_png.len() / 2].to_vec(),
            Expect::DeadLettered {
                code: "corrupt_image",
            },
        ),
        Input::new(
            "empty.jpg",
            Vec::new(),
            Expect::DeadLettered {
                code: "empty_image",
            },
        ),
        Input::new(
            "notes.jpg",
            b"just text\n".to_vec(),
            Expect::DeadLettered {
                code: "unsupported_format",
            },
        ),
        Input::new(
            "bomb.png",
            pixel_bomb_png(50_000, 50_000),
            Expect::DeadLettered {
                code: "too_many_pixels",
            },
        ),
        Input::new(
            "huge exif.jpg",
            with_exif_segment(
                &encode(picture(3, 90, 60), ImageFormat::Jpeg),
                &huge_exif(60_000),
            ),
            Expect::Processed {
                width: 60,
                height: 90,
            },
        ),
        Input::new(
            "corrupt exif.jpg",
            with_exif_segment(
                &encode(picture(4, 90, 60), ImageFormat::Jpeg),
                &corrupt_exif(),
            ),
            Expect::Processed {
                width: 90,
                height: 60,
            },
        ),
        Input::new(
            "animation.gif",
            animated_gif(1500, 3000),
            Expect::Processed {
                width: 1500,
                height: 1500,
            },
        ),
        Input::new(
            "ünï code/a%20b+c.jpg",
            encode(picture(6, 48, 32), ImageFormat::Jpeg),
            Expect::Processed {
                width: 48,
                height: 32,
            },
        ),
        good_neighbour(),
    ]
}

#[test]
fn secrets_are_never_logged_even_at_debug_level() {
    let couchdb_password = format!("couch-{}", uuid::Uuid::new_v4().simple());
    let sasl_password = format!("sasl-{}", uuid::Uuid::new_v4().simple());
    let inputs = hostile_inputs();
    let (_scratch, run) = run_prism(
        "secrets",
        &inputs,
        "thumbnail",
        &[
            ("RUST_LOG", "debug"),
            ("PRISM_COUCHDB__PASSWORD", &couchdb_password),
            ("PRISM_KAFKA__SASL_PASSWORD", &sasl_password),
        ],
    );
    assert_outcomes("secrets", &inputs, &["thumbnail"], &run);
    assert!(
        run.logs.contains("DEBUG"),
        "RUST_LOG=debug was not honoured, so this proves nothing:\n{}",
        run.logs
    );
    let results = std::fs::read_to_string(run.out.join("results.jsonl")).unwrap();
    for secret in [&couchdb_password, &sasl_password] {
        assert!(!run.logs.contains(secret.as_str()), "a secret was logged");
        assert!(!results.contains(secret.as_str()), "a secret was published");
    }
}

#[test]
fn hostile_inputs_through_thumbnail_and_detect() {
    assert_fetched("yolov8n.onnx");
    let inputs = hostile_inputs();
    let (_scratch, run) = run_prism("detect", &inputs, "thumbnail,detect", &[]);
    assert_outcomes("detect", &inputs, &["thumbnail", "detect"], &run);
}

#[test]
fn hostile_inputs_through_classify() {
    assert_fetched("efficientnet-lite0.safetensors");
    let inputs = hostile_inputs();
    let (_scratch, run) = run_prism("classify", &inputs, "classify", &[]);
    assert_outcomes("classify", &inputs, &["classify"], &run);
}
