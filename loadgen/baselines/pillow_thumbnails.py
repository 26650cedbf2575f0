#!/usr/bin/env python3
"""Thumbnails with Pillow, the baseline Prism is measured against (one implementation for every
benchmark: `prism-loadgen thumbnails` runs it, and the thumbnail stage's own bench can too).

Written as Pillow's best users write it: one decode per source, shrunk while decoding (draft(), which
makes libjpeg scale the DCT down by 2, 4 or 8), thumbnail() with Lanczos for the largest size, then
each smaller size from the one before (512 -> 256 -> 128), EXIF orientation applied as Prism and
libvips apply it. Each size is saved as JPEG and WebP with Prism's default qualities (85 and 80,
Pillow's default 4:2:0 subsampling and WebP method 4), as OUT/<stem>_<size>.jpg and .webp.

    pillow_thumbnails.py --out OUT [--processes N] [--times FILE] INPUT...

INPUTs are image files or folders of them. --processes 1 (the default) works one image after
another in this process, the seed paper's sequential method; N > 1 uses a multiprocessing.Pool of N
worker processes over the same function, its parallel method. --times FILE writes each image's
own time (open to last save, in the process that made it) as "SECONDS<TAB>PATH" lines.
"""

import argparse
import multiprocessing
import os
import sys
import time

from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the thumbnails")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--sizes", default="512,256,128", help="longest edges, largest first")
    parser.add_argument("--jpeg-quality", type=int, default=85)
    parser.add_argument("--webp-quality", type=int, default=80)
    parser.add_argument("--times", help="write each image's seconds here")
    parser.add_argument("inputs", nargs="+")
    return parser.parse_args()


def image_files(inputs):
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files.extend(
                os.path.join(path, name)
                for name in sorted(os.listdir(path))
                if name.lower().endswith(IMAGE_SUFFIXES)
            )
        else:
            files.append(path)
    return files


class Thumbnailer:
    """One source in, every size in both formats out. A class so that the pool can pickle it."""

    def __init__(self, out, sizes, jpeg_quality, webp_quality):
        self.out = out
        self.sizes = sorted(sizes, reverse=True)
        self.jpeg_quality = jpeg_quality
        self.webp_quality = webp_quality

    def __call__(self, path):
        started = time.perf_counter()
        stem = os.path.splitext(os.path.basename(path))[0]
        largest = self.sizes[0]
        with Image.open(path) as source:
            # Decode at the smallest DCT scale that still covers the largest thumbnail.
            source.draft("RGB", (largest, largest))
            image = ImageOps.exif_transpose(source)
            if image.mode != "RGB":
                image = image.convert("RGB")
            for size in self.sizes:
                image.thumbnail((size, size), Image.Resampling.LANCZOS)
                base = os.path.join(self.out, f"{stem}_{size}")
                image.save(base + ".jpg", "JPEG", quality=self.jpeg_quality)
                image.save(base + ".webp", "WEBP", quality=self.webp_quality)
        return path, time.perf_counter() - started


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    files = image_files(args.inputs)
    if not files:
        sys.exit(f"pillow_thumbnails: no images in {args.inputs}")
    sizes = [int(size) for size in args.sizes.split(",")]
    thumbnailer = Thumbnailer(args.out, sizes, args.jpeg_quality, args.webp_quality)
    if args.processes <= 1:
        times = [thumbnailer(path) for path in files]
    else:
        # On an error the with block terminates the workers; otherwise they finish and are reaped.
        with multiprocessing.Pool(args.processes) as pool:
            # One image per task: sources differ a lot in size, so small chunks balance the cores.
            times = list(pool.imap_unordered(thumbnailer, files, chunksize=1))
            pool.close()
            pool.join()
    if args.times:
        with open(args.times, "w") as out:
            out.writelines(f"{seconds:.6f}\t{path}\n" for path, seconds in times)


if __name__ == "__main__":
    main()
