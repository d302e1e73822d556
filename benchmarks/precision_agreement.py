"""A bfloat16 export against the float32 export of the same checkpoint, on labelled photos.

    python benchmarks/precision_agreement.py --model_dir=RUN [--eval_pattern=GLOB]
        [--precision=mixed_bfloat16] [--batch_size=16] [--json_out=precision_agreement.json]

Exports the run's latest checkpoint twice (float32, and `--precision`), scores every
record of `--eval_pattern` (default: the held-out real COCO photos of the split that
benchmarks/beyond_paper.py uses, converted into `--work_dir`) through each SavedModel's
`tf_example` signature (the serving path: decode, resize, model, scores), and reports
max and mean |difference of probabilities|, the share of labels (score >= 0.5) and of top-1
classes that agree, and each export's mAP and their difference. The labels come from the
records by the training pipeline's own parser.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.beyond_paper_data import real_split  # noqa: E402
from scdnn_tf.core.precision import read_cpuinfo, vector_cpu_flags  # noqa: E402
from scdnn_tf.data.pipeline import list_shards, make_example_fn  # noqa: E402
from scdnn_tf.evaluation.metrics import multilabel_metrics  # noqa: E402
from scdnn_tf.serving.exporter import export_saved_model, load_from_model_dir  # noqa: E402

flags.DEFINE_string("model_dir", None, "Training run whose latest checkpoint is exported.")
flags.DEFINE_string("eval_pattern", "", "Labelled records ('' = the held-out real photos).")
flags.DEFINE_string("real_data_dir", os.path.join(os.path.dirname(REPO), "shared", "data",
                                                  "coco_real"), "Real COCO photos.")
flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(), "scdnn_precision"),
                    "Where the real photos are converted (reused).")
flags.DEFINE_string("precision", "mixed_bfloat16", "Precision compared with float32.")
flags.DEFINE_integer("batch_size", 16, "Records per signature call.")
flags.DEFINE_string("json_out", "precision_agreement.json", "Where to write the results.")
FLAGS = flags.FLAGS


def labelled_records(pattern: str, num_classes: int, image_size: int):
    """(serialized records [N], labels [N, C], label weights [N, C]) in file order."""
    parse = make_example_fn(num_classes, image_size, max_boxes=100, training=False)
    serialized, labels, weights = [], [], []
    for record in tf.data.TFRecordDataset(list_shards(pattern)):
        example = parse(record, tf.constant([0, 0]))
        serialized.append(record.numpy())
        labels.append(example["labels"].numpy())
        weights.append(example["label_weights"].numpy())
    return serialized, np.stack(labels), np.stack(weights)


def score(signature, records, batch_size: int) -> np.ndarray:
    parts = [signature(examples=tf.constant(records[i:i + batch_size]))["scores"].numpy()
             for i in range(0, len(records), batch_size)]
    return np.concatenate(parts)


def main(argv):
    del argv
    pattern = FLAGS.eval_pattern or real_split(FLAGS.real_data_dir, FLAGS.work_dir)[
        "eval_pattern"]
    scores, names, size = {}, None, None
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("float32", FLAGS.precision):
            model, names, checkpoint = load_from_model_dir(FLAGS.model_dir, precision)
            size = model.image_size
            path = export_saved_model(model, names, os.path.join(tmp, precision))
            signature = tf.saved_model.load(path).signatures["tf_example"]
            if precision == "float32":
                records, labels, weights = labelled_records(pattern, len(names), size)
            scores[precision] = score(signature, records, FLAGS.batch_size)
    a, b = scores["float32"], scores[FLAGS.precision]
    maps = {p: multilabel_metrics(labels, s, 0.5, weights)["mAP"] for p, s in scores.items()}
    result = {"model_dir": FLAGS.model_dir, "checkpoint": checkpoint, "eval_pattern": pattern,
              "images": len(records), "classes": len(names), "precision": FLAGS.precision,
              "max_abs_prob_diff": float(np.abs(a - b).max()),
              "mean_abs_prob_diff": float(np.abs(a - b).mean()),
              "label_agreement": float(np.mean((a >= 0.5) == (b >= 0.5))),
              "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
              "mAP_float32": maps["float32"], f"mAP_{FLAGS.precision}": maps[FLAGS.precision],
              "mAP_difference": maps[FLAGS.precision] - maps["float32"],
              "cpu_flags": vector_cpu_flags(read_cpuinfo()), "load_avg": os.getloadavg()}
    for key, value in result.items():
        print(f"{key}: {value}")
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    flags.mark_flag_as_required("model_dir")
    app.run(main)
