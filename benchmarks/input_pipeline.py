"""Input pipeline throughput at 224 px: images/s per core vs what a TPU v5e chip consumes.

Generates photo-like JPEGs (1/f-spectrum colour noise, the power spectrum of natural images,
at common web sizes, quality 90, 4:2:0) with caption-like texts, builds them with the
`image_text_table` builder, then times each stage of the training pipeline on one CPU core
(tf.data limited to one thread) and on all cores:

    python benchmarks/input_pipeline.py [--images 512] [--batch 128] [--seconds 15]

Required rate (stated assumption): a ViT-B/16 CLIP train step costs about 3x the forward
FLOPs, 2 x params x tokens per tower (image: 86 M x 197 tokens + attention; text: 38 M
non-embedding x 77 tokens) = ~122 GFLOP per image-text pair. One v5e chip peaks at 197 bf16
TFLOP/s; at 50 % MFU it consumes ~800 pairs/s. A v5e host has 28 vCPUs per chip.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from clip_jax.data import schema
from clip_jax.data import sources
from clip_jax.data import train_pipeline
from clip_jax.data import options as data_options
from clip_jax.data import tf_preprocess
from clip_jax.data import tokenizer
from clip_jax.data._tf import tf
from clip_jax.models.presets import get_preset

import tensorflow_datasets as tfds  # after clip_jax.data._tf

SIZES = ((375, 500), (480, 640), (500, 500), (600, 800), (333, 500), (427, 640), (640, 480))
WORDS = ("a photo of the man woman dog cat red blue green small large old new city street "
         "beach mountain sunset people car house tree water river bridge night morning light "
         "dark wooden metal glass table chair window door kitchen garden park field sky cloud "
         "snow rain food plate cup bottle book phone computer screen sign road train bus boat "
         "plane bird horse flower grass stone wall roof vintage modern portrait close up view "
         "in on at with near under over next to behind front side top bottom and or").split()
V5E_PEAK_TFLOPS = 197.0
MFU = 0.5
GFLOP_PER_PAIR = 3 * (2 * 86e6 * 197 + 4 * 197 ** 2 * 768 * 12 + 2 * 38e6 * 77) / 1e9
VCPUS_PER_V5E_CHIP = 28


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] with a natural-image (1/f) spectrum and correlated colour channels."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(height, width)) ** 1.3
    channels = [np.fft.irfft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape)),
                              s=(height, width)) for _ in range(3)]
    luma = channels[0]
    image = np.stack([luma + 0.35 * channels[1], luma + 0.35 * channels[2], luma - 0.2 * channels[1]],
                     axis=-1)
    image = (image - image.mean()) / image.std()
    return np.clip(128 + 48 * image + rng.normal(0, 1.5, image.shape), 0, 255).astype(np.uint8)


def make_table(directory: str, count: int, seed: int = 0) -> tuple[str, float]:
    """Writes `count` JPEGs and a TSV; returns the TSV path and the mean JPEG size in KB."""
    rng = np.random.default_rng(seed)
    rows, total = [], 0
    for n in range(count):
        height, width = SIZES[n % len(SIZES)]
        buffer = io.BytesIO()
        Image.fromarray(photo_like(rng, height, width)).save(buffer, "JPEG", quality=90)
        total += buffer.tell()
        with open(os.path.join(directory, f"{n:05d}.jpg"), "wb") as f:
            f.write(buffer.getvalue())
        caption = " ".join(rng.choice(WORDS, rng.integers(8, 25)))
        rows.append((f"{n:05d}.jpg", caption))
    path = os.path.join(directory, "images.tsv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return path, total / count / 1024


def rate(make: Callable[[], Iterator], items_per_step: int, seconds: float) -> float:
    """Items per second of an iterator after one warm-up step."""
    iterator = make()
    next(iterator)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        steps += 1
    return steps * items_per_step / (time.perf_counter() - start)


def limit_threads(dataset: tf.data.Dataset, threads: int | None) -> tf.data.Dataset:
    if threads is None:
        return dataset
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    workdir = args.workdir or tempfile.mkdtemp(prefix="clip_jax_bench_")
    model = get_preset("ViT-B/16")
    size = model.image_size

    os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
    table, kb = make_table(os.path.join(workdir, "images"), args.images)
    config = data_options.default_config()
    config.dataset = "image_text_table"
    config.data_dir = os.path.join(workdir, "tfds")
    config.table.name = "bench"
    config.table.train_path = table
    config.eval_split = "train"
    config.label_key = ""
    start = time.perf_counter()
    builder = sources.prepare(config)
    build_rate = args.images / (time.perf_counter() - start)

    encoded = [open(os.path.join(workdir, "images", f"{n:05d}.jpg"), "rb").read()
               for n in range(min(args.images, 256))]
    images = tf.data.Dataset.from_tensor_slices(encoded).repeat()
    key = tf.constant([0, 1], tf.int64)

    def stage(fn: Callable[[tf.Tensor], tf.Tensor], threads: int | None) -> Callable[[], Iterator]:
        def make() -> Iterator:
            dataset = images.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch)
            return iter(limit_threads(dataset, threads).prefetch(2))
        return make

    def pipeline(tokenize: str, threads: int | None) -> Callable[[], Iterator]:
        def make() -> Iterator:
            config.tokenize = tokenize
            iterator = train_pipeline.make_train_iterator(
                config, model, global_batch_size=args.batch, seed=0, process_index=0,
                process_count=1)
            dataset = limit_threads(iterator.dataset, threads)
            return dataset.as_numpy_iterator()
        return make

    records = builder.as_data_source("train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    serialized = tf.data.Dataset.from_tensor_slices([records[i] for i in range(len(records))]).repeat()
    features = builder.info.features
    eot = tokenizer.default_tokenizer().eot_token_id

    def token_stage(stored: bool, threads: int | None) -> Callable[[], Iterator]:
        """Caption -> tokens only: parse stored tokens, or parse text and tokenise per batch."""
        key = "tokens" if stored else "captions"
        partial = tfds.decode.PartialDecoding({key: True})
        subset = partial.extract_features(features)

        def make() -> Iterator:
            dataset = serialized.map(lambda s: subset.deserialize_example(s)[key][0],
                                     num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch)
            if stored:
                dataset = dataset.map(lambda t: schema.fit_tokens(t, model.context_length, eot))
            else:
                dataset = dataset.map(lambda c: tf.numpy_function(
                    lambda s: tokenizer.tokenize([x.decode() for x in s], model.context_length),
                    [c], tf.int32))
            return iter(limit_threads(dataset, threads).prefetch(2))
        return make

    captions = [" ".join(np.random.default_rng(n).choice(WORDS, 16)) for n in range(4096)]
    tokenizer.tokenize(captions[:64])
    start = time.perf_counter()
    for _ in range(5):
        tokenizer.tokenize(captions, model.context_length)
    tokenize_rate = 5 * len(captions) / (time.perf_counter() - start)

    stages = {
        "decode JPEG (full image)": lambda e: tf.io.decode_jpeg(e, channels=3)[:size, :size],
        "decode crop + resize (train augment)":
            lambda e: tf_preprocess.train_image(e, key, size, (0.9, 1.0), (3 / 4, 4 / 3)),
        "eval transform (bit-exact resize + crop)": lambda e: tf_preprocess.eval_image(e, size),
    }
    results = []
    for name, stored in (("caption tokens only: stored at build time", True),
                         ("caption tokens only: tokenised in the pipeline", False)):
        results.append((name, rate(token_stage(stored, 1), args.batch, args.seconds / 3),
                        rate(token_stage(stored, None), args.batch, args.seconds / 3)))
    for name, fn in stages.items():
        results.append((name, rate(stage(fn, 1), args.batch, args.seconds),
                        rate(stage(fn, None), args.batch, args.seconds)))
    for name, mode in (("train pipeline, stored tokens", "stored"),
                       ("train pipeline, tokenised in pipeline", "pipeline")):
        results.append((name, rate(pipeline(mode, 1), args.batch, args.seconds),
                        rate(pipeline(mode, None), args.batch, args.seconds)))

    required = V5E_PEAK_TFLOPS * 1e3 * MFU / GFLOP_PER_PAIR
    print(f"\n{args.images} photo-like JPEGs, mean {kb:.0f} KB, sizes {sorted(set(SIZES))}; "
          f"{cores} cores; batch {args.batch}; {size} px; ViT-B/16 context {model.context_length}")
    print(f"build (image_text_table, incl. validation): {build_rate:.0f} images/s; "
          f"dataset {builder.info.dataset_size}")
    print(f"tokenizer alone: {tokenize_rate:.0f} captions/s on one core\n")
    print(f"| stage | examples/s, 1 core | examples/s, {cores} cores |")
    print("|---|---:|---:|")
    for name, one, all_cores in results:
        print(f"| {name} | {one:.0f} | {all_cores:.0f} |")
    per_core = results[-2][1]
    print(f"\nRequired by ViT-B/16 training on one TPU v5e chip: {GFLOP_PER_PAIR:.0f} GFLOP/pair, "
          f"{V5E_PEAK_TFLOPS:.0f} TFLOP/s at {MFU:.0%} MFU -> {required:.0f} images/s; the full "
          f"pipeline needs {required / per_core:.1f} cores per chip (a v5e host has "
          f"{VCPUS_PER_V5E_CHIP} vCPUs per chip).")


if __name__ == "__main__":
    main()
