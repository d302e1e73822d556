r"""The converters' image checks vs TensorFlow's decoders on a corpus of damaged files.

    python benchmarks/image_check_corpus.py [--data=PATH/coco_real] [--out=corpus.json]

Damaged copies (`tests/damage_corpus.py`) of small generated JPEGs (baseline and
progressive, 4:2:0 and 4:4:4, EXIF thumbnail, restart markers, grayscale) and PNGs, and
with `--data` of the first `--num_photos` real photos. For each damage class it prints
how many files the training decoders reject (`preprocess.decode_image` as training,
evaluation and export call it; for JPEG also `decode_and_crop_jpeg` at every DCT ratio and
three windows, as augmented training does), how many each converter check rejects
(`--image_check=structure` and `decode`), its misses (TF rejects, the check does not) and
false alarms. With `--data` it also times `load_image` per photo on every photo there,
both checks alternating in one process (median of 3 rounds).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
import damage_corpus  # noqa: E402
import tensorflow as tf  # noqa: E402

from data_tools import image_checks  # noqa: E402
from scdnn_tf.data import preprocess  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "The coco_real folder (optional: real photos).")
flags.DEFINE_integer("num_photos", 3, "Real photos damaged into the corpus.")
flags.DEFINE_string("out", "image_check_corpus.json", "JSON file for the results.")


def tf_rejects(data: bytes) -> bool:
    """True if any of the training decoders fails on `data`."""
    try:
        image = preprocess.decode_image(tf.constant(data))
        if data.startswith(b"\xff\xd8"):
            h, w = image.shape[:2]
            for r in preprocess.JPEG_RATIOS:
                sh, sw = -(-h // r), -(-w // r)
                for window in ([0, 0, sh, sw], [sh // 2, sw // 2, sh - sh // 2, sw - sw // 2],
                               [0, 0, max(1, sh // 2), max(1, sw // 2)]):
                    tf.io.decode_and_crop_jpeg(data, window, channels=3, ratio=r)
    except tf.errors.InvalidArgumentError:
        return True
    return False


def corpus(data_dir: str | None, num_photos: int) -> list[tuple[str, str, bytes]]:
    """(source, damage class, bytes) for every damaged file."""
    out = [(f"generated {kind}", label, bad)
           for kind, variants, damage in (
               ("jpeg", damage_corpus.jpeg_variants(), damage_corpus.damaged_jpegs),
               ("png", damage_corpus.png_variants(), damage_corpus.damaged_pngs))
           for data in variants.values() for label, bad in damage(data)]
    for path in photos(data_dir)[:num_photos]:
        with open(path, "rb") as f:
            out += [("real photos", label, bad) for label, bad in
                    damage_corpus.damaged_jpegs(f.read())]
    return out


def photos(data_dir: str | None) -> list[str]:
    if not data_dir:
        return []
    return sorted(glob.glob(os.path.join(data_dir, "**", "*.jpg"), recursive=True))


def tabulate(files, path: str) -> dict:
    """{source: {damage class: counts}} with counts n, tf, per check rejected/missed/false."""
    table = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    for source, label, data in files:
        with open(path, "wb") as f:
            f.write(data)
        row = table[source][label]
        row["n"] += 1
        tf_says = tf_rejects(data)
        row["tf"] += tf_says
        for check in image_checks.CHECKS:
            says = isinstance(image_checks.load_image(path, check=check),
                              image_checks.ImageProblem)
            row[check] += says
            row[f"{check}_misses"] += tf_says and not says
            row[f"{check}_false_alarms"] += says and not tf_says
    return {s: {k: dict(v) for k, v in rows.items()} for s, rows in table.items()}


def time_checks(paths: list[str], rounds: int = 3) -> dict:
    """ms per photo of `load_image` for each check, alternating, median of `rounds`."""
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for check in image_checks.CHECKS:
            start = time.perf_counter()
            for p in paths:
                image_checks.load_image(p, check=check)
            times[check].append((time.perf_counter() - start) * 1e3 / len(paths))
    return {c: round(statistics.median(t), 3) for c, t in times.items()}


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        table = tabulate(corpus(FLAGS.data, FLAGS.num_photos), os.path.join(tmp, "x"))
    cols = ["n", "tf", "structure", "structure_misses", "structure_false_alarms", "decode",
            "decode_misses", "decode_false_alarms"]
    print(f"{'source / damage class':60s}" + "".join(f"{c[:14]:>15s}" for c in cols))
    totals = collections.Counter()
    for source, rows in table.items():
        for label, row in rows.items():
            print(f"{source + ': ' + label:60s}" + "".join(f"{row.get(c, 0):15d}" for c in cols))
            totals.update(row)
    print(f"{'total':60s}" + "".join(f"{totals.get(c, 0):15d}" for c in cols))
    result = {"table": table, "totals": dict(totals)}
    paths = photos(FLAGS.data)
    if paths:
        for p in paths:  # page cache warm for both checks
            with open(p, "rb") as f:
                f.read()
        result["ms_per_photo"] = time_checks(paths)
        result["photos_timed"] = len(paths)
        print(f"load_image on {len(paths)} photos, ms per photo: {result['ms_per_photo']}")
    result["load_avg"] = os.getloadavg()
    with open(FLAGS.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
