"""Training input pipeline vs the decode limit, on real COCO photos (images/s, one process).

    python -m benchmarks.input_pipeline --output=/tmp/input_pipeline.json

Converts the COCO subsets under `--data_dir` (coco_mini + coco_tiny: 160 JPEG photos,
~640x480) to TFRecords in a temporary folder with the project's converter
(`data_tools.coco_to_tfrecord`), then times these contenders on the same records, at
each image size, all with the same tf.data parallelism (AUTOTUNE) and batch size:

  decode_bilinear   full `decode_jpeg` + plain bilinear resize (aliased; the decode limit)
  decode_antialias  full `decode_jpeg` + antialiased resize of the whole photo
  dct_antialias     `decode_jpeg(ratio)` (DCT scaling when the output allows) + antialiased
                    resize of the whole photo
  training_image    the fastest way to the *same* training image as the pipeline: the
                    same random crop window, only that window decoded (DCT-scaled when
                    the output allows), flip, antialiased resize. Image only: no boxes,
                    labels or shuffling. The goal's reference.
  before            `make_dataset(training=True)` with the training decode of the
                    original version (full decode, flip, crop, float cast, resize)
  after             `make_dataset(training=True)` as it is now
  recipe            `after` with RandAugment (2 ops, magnitude 9) and Cutout (0.5)

The contenders alternate within each round (the order rotates by one each round); a
round times `--images` images per contender from a fresh iterator after `--warmup`
batches; medians over `--rounds`, and each ratio as the median over rounds of its
per-round ratio, with the 1-minute load average before and after each round. Many short
rounds resist bursts of other jobs on a shared machine better than a few long ones.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import tensorflow as tf
from absl import app, flags

from benchmarks import input_pipeline_before as before_lib
from data_tools import coco_to_tfrecord
from scdnn_tf.data import augment, preprocess, records
from scdnn_tf.data.pipeline import make_dataset

AUTOTUNE = tf.data.AUTOTUNE
SUBSETS = ("coco_mini", "coco_tiny")
CONTENDERS = ("decode_bilinear", "decode_antialias", "dct_antialias", "training_image",
              "before", "after", "recipe")
SCALE_RANGE = (0.5, 1.0)  # make_dataset's default
RATIOS = (("after", "training_image"), ("after", "before"), ("training_image", "decode_antialias"),
          ("recipe", "after"))
RECIPE = dict(randaugment_spec=(2, 9.0), cutout=0.5)


def convert_subsets(data_dir: str, output_dir: str) -> int:
    """Converts each COCO subset with the project's converter; returns the image count."""
    count = 0
    for subset in SUBSETS:
        root = os.path.join(data_dir, subset)
        summary = coco_to_tfrecord.convert(
            os.path.join(root, "annotations", "instances_train2017.json"),
            os.path.join(root, "train2017"), os.path.join(output_dir, subset), num_shards=2)
        count += summary.images_written
    return count


def _full_decode(encoded, size, antialias):
    image = tf.io.decode_jpeg(encoded, channels=3)
    return tf.image.resize(image, [size, size], antialias=antialias)


def _dct_decode(encoded, size):
    image_hw = tf.image.extract_jpeg_shape(encoded)[:2]
    window = tf.concat([[0, 0], image_hw], axis=0)
    image, _ = preprocess.decode_jpeg_window(encoded, window, size)
    return preprocess.resize_image(image, size)


def _training_image(encoded, seed, size):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image_hw = tf.image.extract_jpeg_shape(encoded)[:2]
    window = augment.sample_crop_window(image_hw[0], image_hw[1], SCALE_RANGE, crop_seed)
    image, _ = preprocess.decode_jpeg_window(encoded, window, size)
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    return preprocess.resize_image(image, size)


def _image_only(pattern: str, batch_size: int, fn) -> tf.data.Dataset:
    """Records -> fn(encoded, seed) -> batches of images (the reference contenders)."""
    files = tf.data.Dataset.list_files(pattern, shuffle=True).repeat()
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=AUTOTUNE,
                          deterministic=False)
    seeds = tf.data.Dataset.random().batch(2)
    encoded = lambda s: tf.io.parse_single_example(  # noqa: E731
        s, {records.ENCODED: tf.io.FixedLenFeature([], tf.string)})[records.ENCODED]
    ds = tf.data.Dataset.zip(ds, seeds).map(lambda s, seed: fn(encoded(s), seed),
                                            num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def build(name: str, pattern: str, size: int, batch_size: int) -> tf.data.Dataset:
    """The contender's dataset of batches (dicts for the pipelines, images otherwise)."""
    if name == "decode_bilinear":
        return _image_only(pattern, batch_size, lambda e, s: _full_decode(e, size, False))
    if name == "decode_antialias":
        return _image_only(pattern, batch_size, lambda e, s: _full_decode(e, size, True))
    if name == "dct_antialias":
        return _image_only(pattern, batch_size, lambda e, s: _dct_decode(e, size))
    if name == "training_image":
        return _image_only(pattern, batch_size, lambda e, s: _training_image(e, s, size))
    if name == "before":
        with before_lib.original_training_decode():
            return make_dataset(pattern, 80, size, batch_size, training=True)
    if name == "after":
        return make_dataset(pattern, 80, size, batch_size, training=True)
    if name == "recipe":
        return make_dataset(pattern, 80, size, batch_size, training=True, **RECIPE)
    raise ValueError(f"unknown contender {name!r}")


def dct_difference(pattern: str, size: int) -> dict:
    """How far DCT-scaled decoding moves pixels: whole photos, `dct_antialias` vs
    `decode_antialias` (mean |difference| on the 0..255 scale, photos with ratio > 1)."""
    ds = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)).map(
        lambda s: tf.io.parse_single_example(
            s, {records.ENCODED: tf.io.FixedLenFeature([], tf.string)})[records.ENCODED])
    diffs, photos = [], 0
    for encoded in ds:
        photos += 1
        hw = tf.image.extract_jpeg_shape(encoded)[:2]
        if int(preprocess.jpeg_ratio(hw, size)) > 1:
            full = preprocess.resize_image(tf.io.decode_jpeg(encoded, channels=3), size)
            diffs.append(float(tf.reduce_mean(tf.abs(_dct_decode(encoded, size) - full))))
    return {"photos": photos, "dct_scaled_photos": len(diffs),
            "mean_abs_difference": statistics.mean(diffs) if diffs else None,
            "max_mean_abs_difference": max(diffs) if diffs else None}


def time_round(dataset: tf.data.Dataset, warmup: int, batches: int) -> float:
    """Images/s over `batches` batches of a fresh iterator, after `warmup` batches.

    A fresh iterator per round, deleted afterwards: an idle iterator of another contender
    would keep decoding into its buffers in the background. The warm-up fills the
    shuffle buffer and reaches steady state (buffers drained by this loop).
    """
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator)
        image = batch["image"] if isinstance(batch, dict) else batch
        count += int(image.shape[0])
    rate = count / (time.perf_counter() - start)
    del iterator
    return rate


def run(data_dir: str, image_sizes, batch_size: int, rounds: int, images: int,
        contenders=CONTENDERS, warmup: int = 4) -> dict:
    """Converts the photos, times every contender at every size; returns the results."""
    results = {"batch_size": batch_size, "rounds": rounds, "images_per_round": images,
               "warmup_batches": warmup, "cpu_count": os.cpu_count(),
               "tensorflow": tf.__version__, "sizes": {}}
    batches = max(1, images // batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        results["records"] = convert_subsets(data_dir, tmp)
        pattern = os.path.join(tmp, "*.tfrecord")
        for size in image_sizes:
            datasets = {n: build(n, pattern, size, batch_size) for n in contenders}
            rates = {n: [] for n in contenders}
            loads = []
            names = list(datasets)
            for r in range(rounds):
                loads.append(os.getloadavg()[0])
                # Rotate the order: no contender always follows the same one (a deleted
                # iterator's last in-flight work, a burst pattern of other jobs).
                for name in names[r % len(names):] + names[:r % len(names)]:
                    rates[name].append(time_round(datasets[name], warmup, batches))
            loads.append(os.getloadavg()[0])
            entry = {"load_avg_1min": loads, "images_per_s": rates,
                     "median_images_per_s": {n: statistics.median(r) for n, r in rates.items()}}
            # Ratios paired by round (the contenders of a round share its load), then the
            # median over rounds: steadier than a ratio of medians when other jobs burst.
            for num, den in RATIOS:
                if num in rates and den in rates:
                    entry[f"{num}_over_{den}"] = statistics.median(
                        a / b for a, b in zip(rates[num], rates[den]))
            entry["dct_difference"] = dct_difference(pattern, size)
            results["sizes"][str(size)] = entry
    return results


def print_table(results: dict) -> None:
    sizes = list(results["sizes"])
    names = list(results["sizes"][sizes[0]]["median_images_per_s"])
    print(f"{'images/s (median)':<18}" + "".join(f" | {s + ' px':>9}" for s in sizes))
    for name in names:
        print(f"{name:<18}" + "".join(
            f" | {results['sizes'][s]['median_images_per_s'][name]:>9.1f}" for s in sizes))
    print("ratios (median over rounds of the per-round ratio):")
    for num, den in RATIOS:
        key = f"{num}_over_{den}"
        if key in results["sizes"][sizes[0]]:
            print(f"  {num} / {den}: " + ", ".join(
                f"{s} px {results['sizes'][s][key]:.2f}" for s in sizes))
    for s, e in results["sizes"].items():
        d = e["dct_difference"]
        if d["dct_scaled_photos"]:
            print(f"{s} px: {d['dct_scaled_photos']}/{d['photos']} whole photos DCT-scaled, "
                  f"mean |pixel difference| vs full decode {d['mean_abs_difference']:.2f} "
                  f"(worst photo {d['max_mean_abs_difference']:.2f}) of 255")
        else:
            print(f"{s} px: no whole photo DCT-scaled")
    print("load average (1 min): " + "; ".join(
        f"{s} px {min(e['load_avg_1min']):.1f}-{max(e['load_avg_1min']):.1f}"
        for s, e in results["sizes"].items()))


FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "The coco_real folder (holding coco_mini/, coco_tiny/).")
flags.DEFINE_list("image_sizes", ["224", "448"], "Output image sizes.")
flags.DEFINE_list("contenders", list(CONTENDERS), "Contenders to time.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("rounds", 15, "Alternating rounds (median reported).")
flags.DEFINE_integer("images", 192, "Images per contender per round.")
flags.DEFINE_integer("warmup", 4, "Batches drawn before each timed round.")
flags.DEFINE_string("output", "input_pipeline.json", "Where to write the JSON results.")
flags.mark_flag_as_required("data_dir")


def main(argv):
    del argv
    results = run(FLAGS.data_dir, [int(s) for s in FLAGS.image_sizes], FLAGS.batch_size,
                  FLAGS.rounds, FLAGS.images, tuple(FLAGS.contenders), FLAGS.warmup)
    print_table(results)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
