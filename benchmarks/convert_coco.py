r"""Benchmark: COCO -> TFRecord conversion speed, ours vs TF Model Garden's, on real photos.

    python benchmarks/convert_coco.py --out=/tmp/bench_convert.json \
        [--model_garden_python=~/mg_venv/bin/python] [--num_images=2000] \
        [--num_workers=2 --runs=3] [--work_dir=/tmp/bench_convert_coco]

The photos of coco_mini, coco_tiny and tiny_coco (80 + 80 + 50) are replicated into
`--work_dir` under new file names and image ids (annotation ids renumbered) until there
are at least `--num_images`, with one merged annotation file. On that set it times
`data_tools.coco_to_tfrecord.convert` in this process, our command line and, with
`--model_garden_python`, `official.vision.data.create_coco_tf_record` (a fresh Python
each, as a user runs them; same number of worker processes and shards), `--runs` times
each, the tools alternating run by run; images/s are end to end (start-up included for
the command lines), median of the runs. Boxes kept by each tool are counted from the
written records (Model Garden keeps crowd boxes and drops boxes crossing the image edge;
we leave crowd boxes out by default and clip edge-crossing ones).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools import coco_to_tfrecord
from data_tools.inspect_tfrecord import iter_examples

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "The coco_real folder (subsets with annotations/ and "
                    "train2017/).", required=True)
flags.DEFINE_string("out", "bench_convert_coco.json", "JSON file for the results.")
flags.DEFINE_string("model_garden_python", None, "Python of a venv with tf-models-official.")
flags.DEFINE_string("work_dir", "/tmp/bench_convert_coco", "Where the replicated set goes.")
flags.DEFINE_integer("num_images", 2000, "Replicate the photos to at least this many.")
flags.DEFINE_integer("num_workers", 2, "Worker processes for both tools.")
flags.DEFINE_integer("num_shards", 8, "Output shards.")
flags.DEFINE_integer("runs", 3, "Timed runs per tool (the median is reported).")

SUBSETS = ("coco_mini", "coco_tiny", "tiny_coco")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replicate(data_dir: str, work_dir: str, num_images: int) -> tuple[str, str]:
    """Copies the subsets' photos under new names/ids until >= num_images; returns
    (merged annotation file, image folder). Reuses a complete earlier copy."""
    image_dir = os.path.join(work_dir, "images")
    ann_path = os.path.join(work_dir, f"instances_{num_images}.json")
    if os.path.isfile(ann_path):
        return ann_path, image_dir
    os.makedirs(image_dir, exist_ok=True)
    sources = []
    for name in SUBSETS:
        with open(os.path.join(data_dir, name, "annotations", "instances_train2017.json")) as f:
            sources.append((os.path.join(data_dir, name, "train2017"), json.load(f)))
    merged = {"images": [], "annotations": [], "categories": sources[0][1]["categories"]}
    while len(merged["images"]) < num_images:
        for folder, coco in sources:
            by_image = {}
            for a in coco["annotations"]:
                by_image.setdefault(a["image_id"], []).append(a)
            for image in sorted(coco["images"], key=lambda i: i["id"]):
                new_id = len(merged["images"]) + 1
                name = f"{new_id:012d}.jpg"
                shutil.copyfile(os.path.join(folder, image["file_name"]),
                                os.path.join(image_dir, name))
                merged["images"].append(dict(image, id=new_id, file_name=name))
                for a in by_image.get(image["id"], []):
                    merged["annotations"].append(
                        dict(a, id=len(merged["annotations"]) + 1, image_id=new_id))
    with open(ann_path + ".tmp", "w") as f:
        json.dump(merged, f)
    os.replace(ann_path + ".tmp", ann_path)
    return ann_path, image_dir


def _count(pattern):
    images = boxes = 0
    for ex in iter_examples(pattern):
        images += 1
        boxes += int(ex["boxes"].shape[0])
    return images, boxes


def contenders(ann, img, mg_python):
    """name -> fn(out_prefix) converting the set once."""
    def library(prefix):
        coco_to_tfrecord.convert(ann, img, prefix, FLAGS.num_shards, num_workers=FLAGS.num_workers)

    def cli(python, module, args):
        return lambda prefix: subprocess.run([python, "-m", module, *args(prefix)], check=True,
                                             capture_output=True, cwd=REPO)

    out = {"ours_library": library,
           "ours_cli": cli(sys.executable, "data_tools.coco_to_tfrecord", lambda p: [
               f"--annotations={ann}", f"--image_dir={img}", f"--output_prefix={p}",
               f"--num_shards={FLAGS.num_shards}", f"--num_workers={FLAGS.num_workers}"])}
    if mg_python:
        out["model_garden_cli"] = cli(
            mg_python, "official.vision.data.create_coco_tf_record", lambda p: [
                f"--image_dir={img}", f"--object_annotations_file={ann}",
                f"--output_file_prefix={p}", f"--num_shards={FLAGS.num_shards}",
                f"--num_processes={FLAGS.num_workers}"])
    return out


def main(argv):
    del argv
    ann, img = replicate(FLAGS.data, FLAGS.work_dir, FLAGS.num_images)
    tools = contenders(ann, img, FLAGS.model_garden_python)
    times = {k: [] for k in tools}
    counted_by, loads = {}, []
    for _ in range(FLAGS.runs):  # alternating: every tool sees each phase of the load
        for name, convert in tools.items():
            out = tempfile.mkdtemp(prefix=f"bench_convert_{name}_")
            start = time.perf_counter()
            convert(os.path.join(out, "coco"))
            times[name].append(time.perf_counter() - start)
            counted_by[name] = _count(os.path.join(out, "coco*"))
            shutil.rmtree(out)
        loads.append(os.getloadavg())
    results = {"num_workers": FLAGS.num_workers, "num_shards": FLAGS.num_shards,
               "runs": FLAGS.runs, "cpus": os.cpu_count(), "load_avg_per_run": loads}
    for name, ts in times.items():
        seconds = statistics.median(ts)
        results[name] = {"median_seconds": round(seconds, 3), "seconds": [round(t, 3) for t in ts],
                         "images": counted_by[name][0], "boxes_kept": counted_by[name][1],
                         "images_per_second": round(counted_by[name][0] / seconds, 1)}
    if "model_garden_cli" in results:
        results["ratio_ours_cli_over_model_garden"] = statistics.median(
            [m / o for o, m in zip(times["ours_cli"], times["model_garden_cli"])])
    for key, r in results.items():
        if isinstance(r, dict):
            print(f"{key:18s} {r['images_per_second']:7.1f} images/s (median of "
                  f"{FLAGS.runs}: {r['median_seconds']} s) images={r['images']} "
                  f"boxes kept={r['boxes_kept']}")
    if "ratio_ours_cli_over_model_garden" in results:
        print(f"images/s ours (CLI) / Model Garden: "
              f"{results['ratio_ours_cli_over_model_garden']:.2f} (per-run ratios, median); "
              f"load {' '.join(f'{l[0]:.1f}' for l in loads)}")
    with open(FLAGS.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
