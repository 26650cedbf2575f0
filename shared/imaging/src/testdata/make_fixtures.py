"""Makes the decoding fixtures in this folder; the files it writes are committed, so tests need
neither Python nor jpegtran. Run it again only to change them:

    $PRISM_HOME/venv/bin/python shared/imaging/src/testdata/make_fixtures.py

Needs Pillow (deploy/local/requirements.txt; its wheels include libavif), jpegtran (Debian's
libjpeg-turbo-progs; both installed by deploy/local/install.sh), avifenc (Debian's libavif-bin)
for the nclx AVIF and, for the HEIC only, the
Pillow plugin pillow-heif (`pip install pillow-heif==1.8.1`, libheif 1.23 with x265), which the
tests do not need. The encoders are deterministic: the same versions write the same bytes.

Wide gamut, one per format, each with a colour-managed sRGB truth made by Pillow's ImageCms
(LittleCMS), from the pixels Pillow decodes:
  adobe_rgb.jpg + adobe_rgb.srgb.png      JPEG, APP2 ICC profile: Adobe RGB (1998)
  display_p3.png + display_p3.srgb.png    PNG, iCCP: Display P3
  prophoto.webp + prophoto.srgb.png       lossless WebP, ICCP: ProPhoto RGB
  display_p3.avif + display_p3_avif.srgb.png
                                          AVIF 4:4:4 (libavif, aom), colr 'prof': Display P3
  display_p3_nclx.avif                    the PNG's pixels, lossless AVIF (avifenc), no profile
                                          but colr 'nclx' 12/13/0: Display P3 primaries, sRGB
                                          curve; its truth is display_p3.srgb.png
  prophoto_16bit.tiff + prophoto_tiff.srgb.png
                                          16-bit RGB TIFF, Deflate with horizontal predictor,
                                          ICC tag: ProPhoto RGB (written here; Pillow has no
                                          16-bit RGB mode); its truth from the 8-bit chart it
                                          holds exactly (each value v as v * 257)
The profiles are matrix/TRC ICC v2 profiles built here from each space's published primaries,
white point and transfer curve, so no profile file from elsewhere is needed.

Progressive with a DC point transform Al=10 (the most libjpeg allows for 8-bit samples):
  al10.jpg       baseline.jpg transcoded losslessly by jpegtran with the scan script below
  baseline.jpg   its source, a photo-like picture from Pillow

Orientation, one per format that carries it outside EXIF-in-JPEG, stored as the quadrants
red, green / blue, white (test_images::quadrants) at 64x32 and displayed turned by EXIF
orientation 6 (90 degrees clockwise) to 32x64:
  rotated.heic   HEIC (pillow-heif): the turn as the container's irot property, with the EXIF
                 orientation 6 kept as phones write both; only the former may be applied
  rotated.tiff   8-bit TIFF with Orientation tag 6

Other formats:
  photo.bmp      24-bit BMP, a small photo-like picture

Many blocks in few bytes:
  flat_4096.jpg  4096x4096 flat grey, progressive: a DC scan and an AC scan that codes nothing
                 (a few end-of-block runs), which tests repeat to make decoding costly
"""

import io
import math
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from PIL import Image, ImageCms

HERE = Path(__file__).resolve().parent

D50 = (0.9642, 1.0, 0.8249)
BRADFORD = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))


def matmul(a, b):
    return tuple(
        tuple(sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)) for i in range(3)
    )


def matvec(a, v):
    return tuple(sum(a[i][k] * v[k] for k in range(3)) for i in range(3))


def inverse(m):
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return (
        ((e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det),
        ((f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det),
        ((d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det),
    )


def xyz_of(x, y):
    return (x / y, 1.0, (1 - x - y) / y)


def colourants_d50(primaries, white):
    """Columns of the RGB -> XYZ matrix, Bradford-adapted to the D50 profile connection space."""
    columns = [xyz_of(*p) for p in primaries]
    m = tuple(tuple(columns[j][i] for j in range(3)) for i in range(3))
    white_xyz = xyz_of(*white)
    scale = matvec(inverse(m), white_xyz)
    m = tuple(tuple(m[i][j] * scale[j] for j in range(3)) for i in range(3))
    source_cone, d50_cone = matvec(BRADFORD, white_xyz), matvec(BRADFORD, D50)
    gain = tuple(
        tuple(d50_cone[i] / source_cone[i] if i == j else 0.0 for j in range(3)) for i in range(3)
    )
    adapt = matmul(inverse(BRADFORD), matmul(gain, BRADFORD))
    m = matmul(adapt, m)
    return [tuple(m[i][j] for i in range(3)) for j in range(3)]


def s15(value):
    return struct.pack(">i", round(value * 65536))


def xyz_tag(xyz):
    return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in xyz)


def gamma_curve(gamma):
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def srgb_curve(entries=1024):
    def decode(v):
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    table = [round(decode(i / (entries - 1)) * 65535) for i in range(entries)]
    return b"curv\0\0\0\0" + struct.pack(f">I{entries}H", entries, *table)


def text_description(text):
    ascii_text = text.encode("ascii") + b"\0"
    body = struct.pack(">I", len(ascii_text)) + ascii_text
    body += struct.pack(">II", 0, 0)  # no Unicode description
    body += struct.pack(">HB", 0, 0) + b"\0" * 67  # no ScriptCode description
    return b"desc\0\0\0\0" + body


def icc_profile(name, primaries, white, curve):
    tags = [
        (b"desc", text_description(name)),
        (b"cprt", b"text\0\0\0\0" + b"No copyright, use freely\0"),
        (b"wtpt", xyz_tag(D50)),
    ]
    for signature, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colourants_d50(primaries, white)):
        tags.append((signature, xyz_tag(xyz)))
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]

    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = 128 + len(table) + len(data)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"APPL"
    header += struct.pack(">I4s4s", 0, b"\0\0\0\0", b"\0\0\0\0") + b"\0" * 8
    header += struct.pack(">I", 0) + b"".join(s15(v) for v in D50) + b"\0\0\0\0"
    header += b"\0" * (128 - len(header))
    return header + table + data


D65 = (0.3127, 0.3290)
PROFILES = {
    "adobe_rgb": icc_profile(
        "Adobe RGB (1998) (Prism test fixture)",
        ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06)),
        D65,
        gamma_curve(563 / 256),
    ),
    "display_p3": icc_profile(
        "Display P3 (Prism test fixture)",
        ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
        D65,
        srgb_curve(),
    ),
    "prophoto": icc_profile(
        "ProPhoto RGB (Prism test fixture)",
        ((0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001)),
        (0.3457, 0.3585),
        gamma_curve(1.8),
    ),
}


def chart(columns=8, rows=6, patch=32):
    """Flat-ish patches of many hues, saturations and lightnesses, each with a gentle gradient."""
    image = Image.new("RGB", (columns * patch, rows * patch))
    pixels = image.load()
    for row in range(rows):
        for column in range(columns):
            hue = column / columns
            saturation = 1.0 - row / (rows + 1) if row % 2 == 0 else 0.35 + row / (2 * rows)
            value = 0.95 - 0.5 * (row / rows)
            for y in range(patch):
                for x in range(patch):
                    shade = value * (0.9 + 0.1 * x / patch)
                    rgb = hsv_to_rgb(hue + 0.02 * y / patch, saturation, shade)
                    pixels[column * patch + x, row * patch + y] = tuple(round(c * 255) for c in rgb)
    return image


def hsv_to_rgb(h, s, v):
    h = (h % 1.0) * 6
    i, f = int(h), h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def srgb_truth(path, profile):
    """LittleCMS's sRGB of the file's pixels as Pillow decodes them (Pillow's default intent)."""
    decoded = Image.open(path).convert("RGB")
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return ImageCms.profileToProfile(decoded, source, ImageCms.createProfile("sRGB"))


def wide_gamut():
    picture = chart()
    outputs = {
        "adobe_rgb": ("adobe_rgb.jpg", dict(format="JPEG", quality=95, subsampling=0)),
        "display_p3": ("display_p3.png", dict(format="PNG")),
        "prophoto": ("prophoto.webp", dict(format="WEBP", lossless=True)),
        "display_p3_avif": (
            "display_p3.avif",
            dict(format="AVIF", quality=90, subsampling="4:4:4", speed=6),
        ),
    }
    for name, (file_name, options) in outputs.items():
        profile = PROFILES[name.removesuffix("_avif")]
        ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
        path = HERE / file_name
        picture.save(path, icc_profile=profile, **options)
        # No profile in the truth (sRGB by default): LittleCMS stamps its own with the time.
        srgb_truth(path, profile).save(HERE / f"{name}.srgb.png", icc_profile=None)

    # Code points instead of a profile, as cameras and encoders write AVIF: the PNG's exact
    # pixels (lossless, identity matrix), so the PNG's truth is this file's truth too.
    with tempfile.TemporaryDirectory() as scratch:
        bare = Path(scratch) / "chart.png"
        picture.save(bare, icc_profile=None)
        subprocess.run(
            ["avifenc", "--lossless", "--cicp", "12/13/0", "--ignore-icc", "-s", "6",
             str(bare), str(HERE / "display_p3_nclx.avif")],
            check=True,
        )

    # Half the chart's patch size keeps the uncompressible 16-bit file small.
    small = chart(patch=16)
    (HERE / "prophoto_16bit.tiff").write_bytes(
        tiff_rgb16(small, icc_profile=PROFILES["prophoto"])
    )
    source = ImageCms.ImageCmsProfile(io.BytesIO(PROFILES["prophoto"]))
    truth = ImageCms.profileToProfile(small, source, ImageCms.createProfile("sRGB"))
    truth.save(HERE / "prophoto_tiff.srgb.png", icc_profile=None)


def tiff_rgb16(picture, icc_profile):
    """A little-endian TIFF of `picture`'s 8-bit RGB as 16-bit samples (v * 257), one strip,
    Deflate-compressed after TIFF's horizontal differencing predictor, with an ICC profile tag."""
    width, height = picture.size
    rows = []
    for y in range(height):
        samples = [v * 257 for x in range(width) for v in picture.getpixel((x, y))]
        # Predictor 2: each sample minus the same channel of the pixel to its left, mod 2^16.
        differences = samples[:3] + [
            (samples[i] - samples[i - 3]) % 65536 for i in range(3, len(samples))
        ]
        rows.append(struct.pack(f"<{len(differences)}H", *differences))
    strip = zlib.compress(b"".join(rows), 9)

    short, long, undefined = 3, 4, 7
    entry_count = 12
    bits_offset = 8 + 2 + 12 * entry_count + 4
    icc_offset = bits_offset + 6
    strip_offset = icc_offset + len(icc_profile)
    entries = [
        (256, long, 1, width),  # ImageWidth
        (257, long, 1, height),  # ImageLength
        (258, short, 3, bits_offset),  # BitsPerSample: 16, 16, 16, after the IFD
        (259, short, 1, 8),  # Compression: Deflate
        (262, short, 1, 2),  # PhotometricInterpretation: RGB
        (273, long, 1, strip_offset),  # StripOffsets
        (277, short, 1, 3),  # SamplesPerPixel
        (278, long, 1, height),  # RowsPerStrip
        (279, long, 1, len(strip)),  # StripByteCounts
        (284, short, 1, 1),  # PlanarConfiguration: interleaved
        (317, short, 1, 2),  # Predictor: horizontal differencing
        (34675, undefined, len(icc_profile), icc_offset),  # ICC profile
    ]
    assert len(entries) == entry_count
    ifd = struct.pack("<H", entry_count)
    for tag, kind, count, value in entries:
        inline_short = kind == short and count == 1
        value = struct.pack("<HH", value, 0) if inline_short else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + value
    ifd += struct.pack("<I", 0)  # no next IFD
    header = b"II*\0" + struct.pack("<I", 8)
    return header + ifd + struct.pack("<3H", 16, 16, 16) + icc_profile + strip


def quadrants(width=64, height=32):
    """test_images::quadrants: red, green / blue, white."""
    image = Image.new("RGB", (width, height))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for y in range(height):
        for x in range(width):
            image.putpixel((x, y), colours[(y >= height // 2) * 2 + (x >= width // 2)])
    return image


def orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = quadrants()
    stored.save(HERE / "rotated.tiff", compression="tiff_deflate", tiffinfo={274: 6})

    import pillow_heif

    pillow_heif.register_heif_opener()
    # pillow-heif turns an EXIF orientation into the container's irot/imir and keeps the EXIF
    # tag as it is, as phones do.
    stored.save(HERE / "rotated.heic", format="HEIF", quality=90, exif=exif.tobytes())
    written = pillow_heif.open_heif(HERE / "rotated.heic")
    assert written.size == (32, 64), written.size
    kept = Image.Exif()
    kept.load(written.info["exif"])
    assert kept[0x0112] == 6, "the EXIF orientation is kept"


def other_formats():
    photo_like(64, 48).save(HERE / "photo.bmp", format="BMP")


def photo_like(width=320, height=240):
    image = Image.new("RGB", (width, height))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            ripple = 40 * math.sin(x / 7.0) * math.cos(y / 11.0)
            pixels[x, y] = (
                int(max(0, min(255, 30 + 180 * x / width + ripple))),
                int(max(0, min(255, 60 + 150 * y / height - ripple))),
                int(max(0, min(255, 140 + ripple * 1.5 + 40 * ((x * y) % 17) / 17))),
            )
    return image


def al10():
    baseline = HERE / "baseline.jpg"
    photo_like().save(baseline, format="JPEG", quality=90)
    dc = ["0,1,2: 0 0 0 10;"] + [f"0,1,2: 0 0 {al + 1} {al};" for al in range(9, -1, -1)]
    luma_ac = [f"0: {k} {k} 0 0;" for k in range(1, 64)]
    chroma_ac = ["1: 1 63 0 0;", "2: 1 63 0 0;"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as script:
        script.write("\n".join(dc + luma_ac + chroma_ac) + "\n")
        script.flush()
        subprocess.run(
            ["jpegtran", "-copy", "none", "-scans", script.name]
            + ["-outfile", HERE / "al10.jpg", baseline],
            check=True,
        )


def flat():
    with tempfile.NamedTemporaryFile(suffix=".jpg") as baseline, tempfile.NamedTemporaryFile(
        "w", suffix=".txt"
    ) as script:
        Image.new("L", (4096, 4096), 128).save(baseline.name, format="JPEG", quality=75)
        script.write("0: 0 0 0 0;\n0: 1 63 0 0;\n")
        script.flush()
        subprocess.run(
            ["jpegtran", "-copy", "none", "-scans", script.name]
            + ["-outfile", HERE / "flat_4096.jpg", baseline.name],
            check=True,
        )


if __name__ == "__main__":
    wide_gamut()
    orientation()
    other_formats()
    al10()
    flat()
