r"""Model Garden side of benchmarks/peer_faster_rcnn.py (runs in the Model Garden venv).

    ~/mg_venv/bin/python benchmarks/peer_faster_rcnn_mg.py --boxes=BATCH.npz \
        [--image_size=448 --batch=2 --num_classes=81]

Builds Faster R-CNN R50-FPN (`fasterrcnn_resnetfpn_coco`, random init, float32, no sync
BN) twice: with a 2-FC box head and with its default head (4 conv + 1 FC). The labels come
from Model Garden's own `maskrcnn_input.Parser` for the boxes in BATCH.npz (the SCDNN
side's synthetic batch: normalized `boxes` [B,M,4], `classes` [B,M], -1 = padding; the
parser skips no box, none is crowd). Warms up each model (one train step, one inference
call), prints one JSON line {"flops": ..., "config": ...}, then answers commands read from
stdin, one per line, `train HEAD` or `inference HEAD` (HEAD: mg_2fc, mg_default), with
one JSON line {"seconds": s}: the time of one call, output fetched. Imports nothing from
the project (the project's venv is not this one).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags
from official.core import exp_factory
from official.vision.configs import maskrcnn as maskrcnn_config  # noqa: F401 (registers)
from official.vision.dataloaders import maskrcnn_input
from official.vision.tasks import maskrcnn

flags.DEFINE_string("boxes", None, "npz with the batch's boxes and classes.", required=True)
flags.DEFINE_integer("image_size", 448, "Input side, pixels.")
flags.DEFINE_integer("num_classes", 81, "Classes including background.")
FLAGS = flags.FLAGS

HEADS = {"mg_2fc": {"num_convs": 0, "num_fcs": 2, "fc_dims": 1024}, "mg_default": {}}


def experiment(size, num_classes, head):
    exp = exp_factory.get_exp_config("fasterrcnn_resnetfpn_coco")
    exp.task.model.input_size = [size, size, 3]
    exp.task.model.num_classes = num_classes
    exp.task.model.norm_activation.use_sync_bn = False
    exp.task.init_checkpoint = None
    exp.runtime.mixed_precision_dtype = "float32"
    for key, value in head.items():
        setattr(exp.task.model.detection_head, key, value)
    return exp


def parsed_batch(exp, boxes, classes, seed=0):
    """(images [B,S,S,3], labels) through Model Garden's training parser."""
    model_cfg, parser_cfg = exp.task.model, exp.task.train_data.parser
    parser = maskrcnn_input.Parser(
        output_size=model_cfg.input_size[:2], min_level=model_cfg.min_level,
        max_level=model_cfg.max_level, num_scales=model_cfg.anchor.num_scales,
        aspect_ratios=model_cfg.anchor.aspect_ratios, anchor_size=model_cfg.anchor.anchor_size,
        rpn_match_threshold=parser_cfg.rpn_match_threshold,
        rpn_unmatched_threshold=parser_cfg.rpn_unmatched_threshold,
        rpn_batch_size_per_im=parser_cfg.rpn_batch_size_per_im,
        rpn_fg_fraction=parser_cfg.rpn_fg_fraction, aug_rand_hflip=False,
        skip_crowd_during_training=True, max_num_instances=parser_cfg.max_num_instances,
        include_mask=False)
    parse = parser.parse_fn(is_training=True)
    size = model_cfg.input_size[0]
    rng = np.random.default_rng(seed)
    examples = []
    for b in range(boxes.shape[0]):
        keep = classes[b] >= 0
        n = int(keep.sum())
        box = boxes[b][keep].astype(np.float32)
        examples.append(parse({
            "image": tf.constant(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
            "height": tf.constant(size), "width": tf.constant(size),
            "source_id": tf.constant(str(b)),
            "groundtruth_classes": tf.constant(classes[b][keep].astype(np.int64) + 1),
            "groundtruth_is_crowd": tf.zeros([n], tf.bool),
            "groundtruth_area": tf.constant(
                (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) * size * size),
            "groundtruth_boxes": tf.constant(box)}))
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *examples)


def profiled_flops(fn, *args) -> float:
    graph = tf.function(fn).get_concrete_function(*args).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)


class Contender:
    """One Model Garden model with its optimizer, train step and inference call."""

    def __init__(self, exp, inputs):
        self.task = maskrcnn.MaskRCNNTask(exp.task)
        self.model = self.task.build_model()
        self.optimizer = self.task.create_optimizer(exp.trainer.optimizer_config, exp.runtime)
        self.images, self.labels = inputs
        labels = self.labels
        self.infer_kwargs = {"image_shape": labels["image_info"][:, 1, :],
                                 "anchor_boxes": labels["anchor_boxes"], "training": False}
        self.train_kwargs = dict(self.infer_kwargs, gt_boxes=labels["gt_boxes"],
                                 gt_classes=labels["gt_classes"], training=True)
        self._train = tf.function(
            lambda x: self.task.train_step(x, self.model, self.optimizer)["loss"])
        self._infer = tf.function(lambda x: self.model(x, **self.infer_kwargs))
        self.run("train"), self.run("inference")  # trace and warm up

    def run(self, kind) -> float:
        start = time.perf_counter()
        if kind == "train":
            self._train((self.images, self.labels)).numpy()
        else:
            tf.nest.map_structure(lambda t: t.numpy(), self._infer(self.images))
        return time.perf_counter() - start

    def flops(self) -> dict:
        return {"train_forward_gflop": profiled_flops(
                    lambda x: self.model(x, **self.train_kwargs), self.images) / 1e9,
                "inference_gflop": profiled_flops(
                    lambda x: self.model(x, **self.infer_kwargs), self.images) / 1e9}


def main(argv):
    del argv
    data = np.load(FLAGS.boxes)
    contenders, info = {}, {"flops": {}, "tensorflow": tf.__version__}
    for name, head in HEADS.items():
        exp = experiment(FLAGS.image_size, FLAGS.num_classes, head)
        contenders[name] = Contender(exp, parsed_batch(exp, data["boxes"], data["classes"]))
        info["flops"][name] = contenders[name].flops()
        m = exp.task.model
        info[name] = {"levels": [m.min_level, m.max_level],
                      "rpn_train_proposals": m.roi_generator.pre_nms_top_k,
                      "num_proposals_train": m.roi_generator.num_proposals,
                      "sampled_rois": m.roi_sampler.num_sampled_rois,
                      "head": m.detection_head.as_dict(),
                      "optimizer": exp.trainer.optimizer_config.optimizer.type}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        kind, name = line.split()
        print(json.dumps({"seconds": contenders[name].run(kind)}), flush=True)


if __name__ == "__main__":
    app.run(main)
