"""Images/s of the numpy image preprocessing against transformers' and torchvision's.

    python benchmarks/preprocess.py [--sizes 4000x3000 1600x1200 640x480] [--files 6]
                                    [--repeats 5]

Writes seeded photo-like JPEGs of each size to a temporary folder, then times reading and
preprocessing every file to the ViT-B/32 input (224 px; decode included) with:
- `clip_jax.preprocess` (bit-exact with CLIPImageProcessor: `clip_jax/data/preprocess.py`);
- transformers' `CLIPImageProcessor` on `Image.open(path).convert("RGB")` (the reference);
- torchvision's Resize(bicubic) + CenterCrop + ToTensor + Normalize on the same PIL images
  (open_clip's transform; one uint8 level off on a few pixels, see the module above).
Repeats alternate the sides; each ratio to CLIPImageProcessor is formed within one repeat and
printed as the median and [min, max] over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

import clip_jax
from clip_jax.models.presets import get_preset


def write_photos(folder: Path, width: int, height: int, count: int) -> list[str]:
    """`count` JPEGs (quality 90): smooth colour fields plus noise, like a photo's spectrum."""
    rng = np.random.default_rng(width * 7 + height)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3)),
                        0, 255).astype(np.uint8)
        path = folder / f"{width}x{height}_{i}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(str(path))
    return paths


def sides(config) -> dict[str, Callable[[list[str]], object]]:
    """Side name -> a function preprocessing a list of files into a batch."""
    import torchvision.transforms as T
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": config.image_size},
                                   crop_size={"height": config.image_size,
                                              "width": config.image_size},
                                   image_mean=list(config.image_mean),
                                   image_std=list(config.image_std))
    torchvision = T.Compose([
        T.Resize(config.image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(config.image_size), T.ToTensor(),
        T.Normalize(config.image_mean, config.image_std)])

    def pil(paths: list[str]) -> list[Image.Image]:
        return [Image.open(p).convert("RGB") for p in paths]

    return {
        "clip_jax": lambda paths: clip_jax.preprocess(paths, config),
        "CLIPImageProcessor": lambda paths: processor(images=pil(paths), return_tensors="np"),
        "torchvision": lambda paths: [torchvision(image) for image in pil(paths)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["4000x3000", "1600x1200", "640x480"],
                        help="photo sizes, WIDTHxHEIGHT")
    parser.add_argument("--files", type=int, default=6, help="files per size")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats")
    args = parser.parse_args()
    config = get_preset("ViT-B/32")
    runners = sides(config)
    names = list(runners)
    print(f"ViT-B/32 input ({config.image_size} px), decode included; {args.repeats} "
          "alternating repeats; median [min, max]")
    print("| photo | side | images/s | vs CLIPImageProcessor |\n|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            paths = write_photos(Path(tmp), width, height, args.files)
            rates: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.repeats):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    start = time.perf_counter()
                    runners[name](paths)
                    rates[name].append(len(paths) / (time.perf_counter() - start))
            for name in names:
                ratios = [a / b for a, b in zip(rates[name], rates["CLIPImageProcessor"])]
                print(f"| {size} | {name} | {statistics.median(rates[name]):.1f} | "
                      f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] |")


if __name__ == "__main__":
    main()
