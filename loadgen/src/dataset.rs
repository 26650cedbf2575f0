//! `prism-loadgen dataset`: a set of distinct, camera-like JPEG photos made deterministically from
//! real photographs (`deploy/local/fetch-photos.sh` fetches them from Debian's wallpaper packages).
//!
//! Each photo frames its own part of a source (crop, scale, portrait or landscape, mirrored or not),
//! at a resolution real cameras and phones produce (2 to 20 MP), with a slight colour shift and
//! sensor grain, and is encoded as cameras and exports do: JPEG quality 72 to 97, 4:2:0, 4:2:2 or
//! 4:4:4 chroma, baseline or progressive, with or without an EXIF block (make, model, date, and
//! often an orientation tag with the pixels stored sideways, as phones do). So every file is
//! distinct content, and dedup cannot hide any work. An optional share of exact copies under other
//! names models people uploading the same photo twice.
//!
//! Deterministic: a photo's recipe comes from its own ChaCha8 stream of the seed (the order photos
//! are made in on the cores does not matter), and the manifest lists every file's sha256. The
//! encoders use SIMD where the CPU has it, so the bytes are the same for the same seed, sources and
//! build on the same kind of CPU.

use anyhow::{Context, bail, ensure};
use exif::experimental::Writer as ExifWriter;
use exif::{Field, In, Tag, Value};
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{RgbImage, imageops};
use indicatif::{ProgressBar, ProgressStyle};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Names the recipe rules; a change to them that changes the bytes bumps it.
pub const GENERATOR: &str = "prism-loadgen dataset v1";
/// The photos, under the dataset folder.
pub const IMAGES_DIR: &str = "images";
/// Every file with its sha256, size and recipe, in the dataset folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A source is scaled up at most this much to fill a frame: more would look soft, unlike a camera.
const MAX_UPSCALE: f64 = 1.25;
/// A photo frames at least this share (per edge) of the largest crop a source allows.
const MIN_CROP_SHARE: f64 = 0.55;
/// Stream of the ChaCha8 generator that picks which photos are copied and the file names; photo
/// `i` uses stream `i`.
const LAYOUT_STREAM: u64 = u64::MAX;

/// A resolution that a real camera or phone produces (landscape), and how common it is in the mix.
#[derive(Debug, Clone, Copy)]
pub struct Camera {
    /// EXIF make and model; empty for files that carry no camera (exports, video frames).
    pub make: &'static str,
    pub model: &'static str,
    pub width: u32,
    pub height: u32,
    /// Relative frequency in the set.
    pub weight: u32,
}

const fn camera(
    make: &'static str,
    model: &'static str,
    width: u32,
    height: u32,
    weight: u32,
) -> Camera {
    Camera {
        make,
        model,
        width,
        height,
        weight,
    }
}

/// 2 to 20 MP, about 11 MP on average; 12 MP phones most often, as in a photo library.
pub const CAMERAS: &[Camera] = &[
    camera("Apple", "iPhone 13", 4032, 3024, 6),
    camera("samsung", "SM-G991B", 4000, 3000, 4),
    camera("Google", "Pixel 6a", 4032, 2268, 2),
    camera("HUAWEI", "MAR-LX1A", 4608, 3456, 2),
    camera("Canon", "Canon EOS 7D", 5184, 3456, 2),
    camera("SONY", "DSC-RX100M3", 5472, 3648, 2),
    camera("Canon", "Canon PowerShot SX230 HS", 4000, 3000, 1),
    camera("Apple", "iPhone 6", 3264, 2448, 3),
    camera("DJI", "FC7303", 4000, 2250, 1),
    camera("Apple", "iPad Air", 2592, 1936, 2),
    camera("Apple", "iPhone 3GS", 2048, 1536, 2),
    // Resized exports and video frames: no camera in their metadata.
    camera("", "", 1920, 1440, 2),
    camera("", "", 1920, 1080, 1),
];

/// Chroma subsampling of a JPEG, as cameras and editors write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subsampling {
    #[serde(rename = "4:2:0")]
    S420,
    #[serde(rename = "4:2:2")]
    S422,
    #[serde(rename = "4:4:4")]
    S444,
}

impl Subsampling {
    fn sampling_factor(self) -> SamplingFactor {
        match self {
            Self::S420 => SamplingFactor::R_4_2_0,
            Self::S422 => SamplingFactor::R_4_2_2,
            Self::S444 => SamplingFactor::R_4_4_4,
        }
    }
}

/// Everything that makes one photo: render(recipe, its source) gives the same bytes every time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub source: String,
    /// The part of the source shown, in its pixels: left, top, width, height.
    pub crop: [f64; 4],
    /// As displayed, after EXIF orientation.
    pub width: u32,
    pub height: u32,
    pub mirrored: bool,
    /// Per-channel gain (R, G, B) and a gamma: a slightly different white balance and exposure.
    pub gains: [f32; 3],
    pub gamma: f32,
    /// Standard deviation of the luminance noise, in 8-bit levels, and the seed of its generator.
    pub grain: f32,
    pub grain_seed: u64,
    pub quality: u8,
    pub subsampling: Subsampling,
    pub progressive: bool,
    pub optimized_huffman: bool,
    /// EXIF block: camera make and model (empty for none), capture time and orientation tag (1, 3,
    /// 6 or 8; the pixels are stored so that applying it shows the photo upright).
    pub exif: Option<ExifRecipe>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExifRecipe {
    pub make: String,
    pub model: String,
    pub taken_at: String,
    pub orientation: u16,
}

impl Recipe {
    fn orientation(&self) -> u16 {
        self.exif.as_ref().map_or(1, |exif| exif.orientation)
    }
}

/// A source photograph: its file name under the sources folder, digest and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub name: String,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
}

/// One file of the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Photo {
    /// Under `images/`.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// As displayed, after EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// For an exact copy: the file it copies (and then no recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub seed: u64,
    pub distinct: usize,
    pub duplicates: usize,
    pub sources: Vec<Source>,
    /// Sorted by file name.
    pub photos: Vec<Photo>,
}

impl Manifest {
    /// Reads `DIR/manifest.json` of a dataset folder.
    pub fn load(dataset: &Path) -> anyhow::Result<Manifest> {
        let path = dataset.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (make the set with `prism-loadgen dataset --out {}`)",
                path.display(),
                dataset.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

pub struct DatasetOptions<'a> {
    /// Folder of real photographs (JPEG or PNG, upright).
    pub sources: PathBuf,
    pub out: PathBuf,
    /// Distinct photos.
    pub count: usize,
    pub seed: u64,
    /// Share of the whole set that are exact copies of other files, in [0, 1).
    pub duplicates: f64,
    pub cameras: &'a [Camera],
}

/// The set of `count` distinct photos (`seed`, `duplicates`) under `root`, made from `sources`
/// unless an earlier run made it already: the experiments share their sets across runs.
pub fn ensure_set(
    root: &Path,
    sources: &Path,
    count: usize,
    seed: u64,
    duplicates: f64,
) -> anyhow::Result<PathBuf> {
    let out = root.join(format!(
        "photos-{count}-seed{seed}-copies{:.0}",
        duplicates * 100.0
    ));
    if Manifest::load(&out).is_ok_and(|m| {
        m.distinct == count && m.seed == seed && m.duplicates == duplicate_count(count, duplicates)
    }) {
        return Ok(out);
    }
    let _ = std::fs::remove_dir_all(&out);
    eprintln!("making {}", out.display());
    generate(&DatasetOptions {
        sources: sources.to_path_buf(),
        out: out.clone(),
        count,
        seed,
        duplicates,
        cameras: CAMERAS,
    })?;
    Ok(out)
}

/// Copies that make `share` of a set with `distinct` originals.
pub fn duplicate_count(distinct: usize, share: f64) -> usize {
    (distinct as f64 * share / (1.0 - share)).round() as usize
}

/// Makes the set under `options.out` (`images/` and `manifest.json`) and returns its manifest.
pub fn generate(options: &DatasetOptions) -> anyhow::Result<Manifest> {
    ensure!(options.count > 0, "--count must be at least 1");
    ensure!(
        (0.0..1.0).contains(&options.duplicates),
        "--duplicates is the share of copies in the whole set: at least 0, below 1"
    );
    let images_dir = options.out.join(IMAGES_DIR);
    if images_dir
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        bail!(
            "{} already has files; choose another --out or delete it",
            images_dir.display()
        );
    }
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("creating {}", images_dir.display()))?;

    let sources = read_sources(&options.sources)?;
    let recipes: Vec<Recipe> = (0..options.count)
        .map(|index| plan(options.seed, index, &sources, options.cameras))
        .collect::<anyhow::Result<_>>()?;
    let copies = duplicate_count(options.count, options.duplicates);
    let (names, copied) = layout(options.seed, options.count, copies);

    // Each source is decoded once, by the first photo that needs it.
    let decoded: Vec<OnceLock<Result<RgbImage, String>>> =
        sources.iter().map(|_| OnceLock::new()).collect();
    let progress = progress_bar(options.count as u64, "photos");
    let originals: Vec<Photo> = recipes
        .into_par_iter()
        .zip(names[..options.count].par_iter())
        .map(|(recipe, name)| {
            let index = sources
                .iter()
                .position(|s| s.name == recipe.source)
                .expect("plan picks a listed source");
            let pixels = decoded[index]
                .get_or_init(|| decode_source(&options.sources.join(&recipe.source)))
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let bytes = render(&recipe, pixels)?;
            std::fs::write(images_dir.join(name), &bytes)
                .with_context(|| format!("writing {name}"))?;
            progress.inc(1);
            Ok(Photo {
                file: name.clone(),
                sha256: sha256_hex(&bytes),
                bytes: bytes.len() as u64,
                width: recipe.width,
                height: recipe.height,
                duplicate_of: None,
                recipe: Some(recipe),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    progress.finish_and_clear();

    let mut seen = HashSet::new();
    for photo in &originals {
        ensure!(
            seen.insert(&photo.sha256),
            "two photos came out byte-identical ({}): dedup would hide work; report seed {}",
            photo.file,
            options.seed
        );
    }
    let mut photos = originals.clone();
    for (name, &original) in names[options.count..].iter().zip(&copied) {
        let of = &originals[original];
        std::fs::copy(images_dir.join(&of.file), images_dir.join(name))
            .with_context(|| format!("copying {} to {name}", of.file))?;
        photos.push(Photo {
            file: name.clone(),
            duplicate_of: Some(of.file.clone()),
            recipe: None,
            ..of.clone()
        });
    }
    photos.sort_by(|a, b| a.file.cmp(&b.file));
    let manifest = Manifest {
        generator: GENERATOR.into(),
        seed: options.seed,
        distinct: options.count,
        duplicates: copies,
        sources,
        photos,
    };
    std::fs::write(
        options.out.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(manifest)
}

/// A progress bar on a terminal; nothing when stderr is not one (CI logs).
pub fn progress_bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} {{elapsed}} (eta {{eta}})"
        ))
        .expect("a valid template"),
    );
    bar
}

fn read_sources(dir: &Path) -> anyhow::Result<Vec<Source>> {
    let hint = "fetch them with deploy/local/fetch-photos.sh or name a folder with --sources";
    let mut sources = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the source photos in {}: {hint}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"));
        if !is_image {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let (width, height) = image::ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()?
            .into_dimensions()
            .with_context(|| format!("reading {}", path.display()))?;
        sources.push(Source {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            sha256: sha256_hex(&bytes),
            width,
            height,
        });
    }
    ensure!(
        !sources.is_empty(),
        "no JPEG or PNG photos in {}: {hint}",
        dir.display()
    );
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(sources)
}

fn decode_source(path: &Path) -> Result<RgbImage, String> {
    image::open(path)
        .map(|image| image.to_rgb8())
        .map_err(|e| format!("decoding {}: {e}", path.display()))
}

/// Photo `index`'s own generator: independent of the others, whatever order they are made in.
fn photo_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// The recipe of photo `index`: cheap, pure, and the same for the same seed and sources.
pub fn plan(
    seed: u64,
    index: usize,
    sources: &[Source],
    cameras: &[Camera],
) -> anyhow::Result<Recipe> {
    let mut rng = photo_rng(seed, index as u64);
    let camera = cameras.choose_weighted(&mut rng, |c| c.weight)?;
    let portrait = rng.random_bool(0.3);
    let (width, height) = if portrait {
        (camera.height, camera.width)
    } else {
        (camera.width, camera.height)
    };
    let aspect = f64::from(width) / f64::from(height);
    // The largest crop of a source with the photo's aspect ratio.
    let largest_crop = |s: &Source| {
        let (w, h) = (f64::from(s.width), f64::from(s.height));
        if w / h > aspect {
            (h * aspect, h)
        } else {
            (w, w / aspect)
        }
    };
    let fitting: Vec<&Source> = sources
        .iter()
        .filter(|s| largest_crop(s).0 * MAX_UPSCALE >= f64::from(width))
        .collect();
    let source = match fitting.choose(&mut rng) {
        Some(source) => *source,
        // No source is large enough for this resolution: the largest one, scaled up more.
        None => sources
            .iter()
            .max_by(|a, b| largest_crop(a).0.total_cmp(&largest_crop(b).0))
            .context("no sources")?,
    };
    let (max_width, max_height) = largest_crop(source);
    let least_share = (f64::from(width) / (max_width * MAX_UPSCALE)).clamp(MIN_CROP_SHARE, 1.0);
    let share = rng.random_range(least_share..=1.0);
    let (crop_width, crop_height) = (max_width * share, max_height * share);
    let left = rng.random_range(0.0..=f64::from(source.width) - crop_width);
    let top = rng.random_range(0.0..=f64::from(source.height) - crop_height);

    let mirrored = rng.random_bool(0.5);
    let gains = [(); 3].map(|_| rng.random_range(0.94..=1.06));
    let gamma = rng.random_range(0.9..=1.1);
    let grain = rng.random_range(0.0..=3.0);
    let grain_seed = rng.random();
    let quality = rng.random_range(72..=97);
    let subsampling = *[
        (Subsampling::S420, 14),
        (Subsampling::S422, 3),
        (Subsampling::S444, 3),
    ]
    .choose_weighted(&mut rng, |(_, weight)| *weight)?;
    let subsampling = subsampling.0;
    let progressive = rng.random_bool(0.2);
    let optimized_huffman = rng.random_bool(0.4);
    // Cameras write EXIF, most exports keep it; phones store portraits sideways and tag them.
    let exif = (!camera.make.is_empty() && rng.random_bool(0.9)).then(|| {
        let orientation = if portrait && rng.random_bool(0.6) {
            *[6, 8].choose(&mut rng).expect("not empty")
        } else if rng.random_bool(0.03) {
            3
        } else {
            1
        };
        let taken_at = format!(
            "20{:02}:{:02}:{:02} {:02}:{:02}:{:02}",
            rng.random_range(12..=25),
            rng.random_range(1..=12),
            rng.random_range(1..=28),
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..60)
        );
        ExifRecipe {
            make: camera.make.into(),
            model: camera.model.into(),
            taken_at,
            orientation,
        }
    });
    Ok(Recipe {
        source: source.name.clone(),
        crop: [left, top, crop_width, crop_height],
        width,
        height,
        mirrored,
        gains,
        gamma,
        grain,
        grain_seed,
        quality,
        subsampling,
        progressive,
        optimized_huffman,
        exif,
    })
}

/// The file names (`IMG_0042.jpg`, in a shuffled order so copies are spread among the originals)
/// and, for each copy, the index of the original it copies.
fn layout(seed: u64, distinct: usize, copies: usize) -> (Vec<String>, Vec<usize>) {
    let mut rng = photo_rng(seed, LAYOUT_STREAM);
    let total = distinct + copies;
    let digits = total.to_string().len().max(4);
    let mut numbers: Vec<usize> = (0..total).collect();
    numbers.shuffle(&mut rng);
    let names = numbers
        .into_iter()
        .map(|n| format!("IMG_{n:0digits$}.jpg"))
        .collect();
    let copied = (0..copies).map(|_| rng.random_range(0..distinct)).collect();
    (names, copied)
}

/// The JPEG file of `recipe`, from its source's pixels.
pub fn render(recipe: &Recipe, source: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut upright = RgbImage::new(recipe.width, recipe.height);
    let [left, top, width, height] = recipe.crop;
    Resizer::new().resize(
        source,
        &mut upright,
        &ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
            .crop(left, top, width, height),
    )?;
    if recipe.mirrored {
        imageops::flip_horizontal_in_place(&mut upright);
    }
    shift_colours_and_add_grain(&mut upright, recipe)?;
    // Stored so that a viewer applying the orientation tag shows `upright`.
    let stored = match recipe.orientation() {
        3 => imageops::rotate180(&upright),
        6 => imageops::rotate270(&upright),
        8 => imageops::rotate90(&upright),
        _ => upright,
    };
    let mut bytes = Vec::new();
    let mut encoder = Encoder::new(&mut bytes, recipe.quality);
    encoder.set_sampling_factor(recipe.subsampling.sampling_factor());
    encoder.set_progressive(recipe.progressive);
    encoder.set_optimized_huffman_tables(recipe.optimized_huffman);
    if let Some(exif) = &recipe.exif {
        encoder.add_app_segment(1, &exif_segment(exif, stored.width(), stored.height())?)?;
    }
    encoder.encode(
        stored.as_raw(),
        u16::try_from(stored.width())?,
        u16::try_from(stored.height())?,
        ColorType::Rgb,
    )?;
    Ok(bytes)
}

fn shift_colours_and_add_grain(image: &mut RgbImage, recipe: &Recipe) -> anyhow::Result<()> {
    let curves: [[f32; 256]; 3] = recipe.gains.map(|gain| {
        std::array::from_fn(|level| 255.0 * gain * (level as f32 / 255.0).powf(recipe.gamma))
    });
    let noise = Normal::new(0.0f32, recipe.grain)?;
    let mut rng = ChaCha8Rng::seed_from_u64(recipe.grain_seed);
    for pixel in image.pixels_mut() {
        // Luminance noise, the same on every channel, like a sensor's after demosaicing.
        let grain = noise.sample(&mut rng);
        for (channel, curve) in pixel.0.iter_mut().zip(&curves) {
            *channel = (curve[usize::from(*channel)] + grain)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    Ok(())
}

/// APP1 payload: "Exif\0\0" and a TIFF structure with the camera, date and orientation.
fn exif_segment(exif: &ExifRecipe, width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let ascii = |text: &str| Value::Ascii(vec![text.as_bytes().to_vec()]);
    let field = |tag, value| Field {
        tag,
        ifd_num: In::PRIMARY,
        value,
    };
    let mut fields = vec![
        field(Tag::Orientation, Value::Short(vec![exif.orientation])),
        field(Tag::DateTimeOriginal, ascii(&exif.taken_at)),
        field(Tag::PixelXDimension, Value::Long(vec![width])),
        field(Tag::PixelYDimension, Value::Long(vec![height])),
    ];
    if !exif.make.is_empty() {
        fields.push(field(Tag::Make, ascii(&exif.make)));
        fields.push(field(Tag::Model, ascii(&exif.model)));
    }
    let mut writer = ExifWriter::new();
    for field in &fields {
        writer.push_field(field);
    }
    let mut tiff = Cursor::new(Vec::new());
    writer.write(&mut tiff, false)?;
    let mut segment = b"Exif\0\0".to_vec();
    segment.extend(tiff.into_inner());
    Ok(segment)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// Small resolutions so that a test makes a set in milliseconds.
    const TINY_CAMERAS: &[Camera] = &[
        camera("Apple", "iPhone 13", 96, 72, 3),
        camera("Canon", "Canon EOS 7D", 120, 80, 2),
        camera("", "", 64, 36, 1),
    ];

    fn sources_in(dir: &Path) -> PathBuf {
        let sources = dir.join("sources");
        std::fs::create_dir_all(&sources).unwrap();
        for (name, width, height) in [("a.png", 200, 150), ("b.jpg", 160, 240)] {
            let image = RgbImage::from_fn(width, height, |x, y| {
                Rgb([
                    (x * 7 % 256) as u8,
                    (y * 5 % 256) as u8,
                    ((x ^ y) % 256) as u8,
                ])
            });
            image.save(sources.join(name)).unwrap();
        }
        sources
    }

    fn options(dir: &Path, out: &str, seed: u64, duplicates: f64) -> DatasetOptions<'static> {
        DatasetOptions {
            sources: dir.join("sources"),
            out: dir.join(out),
            count: 12,
            seed,
            duplicates,
            cameras: TINY_CAMERAS,
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_files_and_another_seed_other_files() {
        let dir = tempfile::tempdir().unwrap();
        sources_in(dir.path());
        let first = generate(&options(dir.path(), "first", 7, 0.0)).unwrap();
        let again = generate(&options(dir.path(), "again", 7, 0.0)).unwrap();
        let other = generate(&options(dir.path(), "other", 8, 0.0)).unwrap();
        assert_eq!(first, again);
        for photo in &first.photos {
            let bytes = std::fs::read(dir.path().join("first/images").join(&photo.file)).unwrap();
            assert_eq!(sha256_hex(&bytes), photo.sha256, "{}", photo.file);
        }
        let first_digests: HashSet<_> = first.photos.iter().map(|p| &p.sha256).collect();
        assert!(
            other
                .photos
                .iter()
                .all(|p| !first_digests.contains(&p.sha256))
        );
        assert_eq!(first, Manifest::load(&dir.path().join("first")).unwrap());
    }

    #[test]
    fn every_photo_is_distinct_and_copies_make_the_asked_share() {
        let dir = tempfile::tempdir().unwrap();
        sources_in(dir.path());
        let manifest = generate(&options(dir.path(), "set", 1, 0.25)).unwrap();
        let originals: Vec<_> = manifest
            .photos
            .iter()
            .filter(|p| p.duplicate_of.is_none())
            .collect();
        let copies: Vec<_> = manifest
            .photos
            .iter()
            .filter(|p| p.duplicate_of.is_some())
            .collect();
        assert_eq!(originals.len(), 12);
        assert_eq!(copies.len(), 4, "a quarter of 16 files");
        let digests: HashSet<_> = originals.iter().map(|p| &p.sha256).collect();
        assert_eq!(digests.len(), originals.len());
        for copy in copies {
            let original = copy.duplicate_of.as_ref().unwrap();
            let read =
                |name: &str| std::fs::read(dir.path().join("set/images").join(name)).unwrap();
            assert_eq!(read(&copy.file), read(original));
        }
        let names: HashSet<_> = manifest.photos.iter().map(|p| &p.file).collect();
        assert_eq!(names.len(), 16);
    }

    #[test]
    fn photos_have_their_recipes_dimensions_and_orientation() {
        let dir = tempfile::tempdir().unwrap();
        sources_in(dir.path());
        let manifest = generate(&options(dir.path(), "set", 3, 0.0)).unwrap();
        for photo in &manifest.photos {
            let recipe = photo.recipe.as_ref().unwrap();
            let path = dir.path().join("set/images").join(&photo.file);
            let stored = image::image_dimensions(&path).unwrap();
            let sideways = matches!(recipe.orientation(), 6 | 8);
            let expected = if sideways {
                (photo.height, photo.width)
            } else {
                (photo.width, photo.height)
            };
            assert_eq!(stored, expected, "{}", photo.file);
            let file = std::fs::File::open(&path).unwrap();
            let read = exif::Reader::new().read_from_container(&mut std::io::BufReader::new(file));
            match (&recipe.exif, read) {
                (Some(exif), Ok(found)) => {
                    let tag = found.get_field(Tag::Orientation, In::PRIMARY).unwrap();
                    assert_eq!(tag.value.get_uint(0), Some(u32::from(exif.orientation)));
                }
                (None, Err(_)) => {}
                (wanted, read) => panic!(
                    "{}: wanted {wanted:?}, read an EXIF block: {}",
                    photo.file,
                    read.is_ok()
                ),
            }
        }
    }

    #[test]
    fn plans_are_pure_and_frame_the_source_inside_its_bounds() {
        let sources = vec![
            Source {
                name: "wide.jpg".into(),
                sha256: String::new(),
                width: 6000,
                height: 3400,
            },
            Source {
                name: "small.jpg".into(),
                sha256: String::new(),
                width: 1600,
                height: 1200,
            },
        ];
        for index in 0..200 {
            let recipe = plan(5, index, &sources, CAMERAS).unwrap();
            assert_eq!(recipe, plan(5, index, &sources, CAMERAS).unwrap());
            let source = sources.iter().find(|s| s.name == recipe.source).unwrap();
            let [left, top, width, height] = recipe.crop;
            assert!(left >= 0.0 && top >= 0.0);
            assert!(left + width <= f64::from(source.width) + 1e-6);
            assert!(top + height <= f64::from(source.height) + 1e-6);
            let megapixels = f64::from(recipe.width * recipe.height) / 1e6;
            assert!((2.0..=20.0).contains(&megapixels), "{megapixels} MP");
        }
    }

    #[test]
    fn duplicate_shares_count_copies_of_the_whole_set() {
        assert_eq!(duplicate_count(200, 0.0), 0);
        assert_eq!(duplicate_count(200, 0.5), 200);
        assert_eq!(duplicate_count(210, 0.3), 90);
    }
}
