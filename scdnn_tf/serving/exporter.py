"""The export library: a training run's checkpoint -> a SavedModel for TF Serving.

`export_saved_model` writes `DIR/<version>/`, a SavedModel (TF Serving's layout: a new integer version
directory per export) made with `keras.export.ExportArchive`. Decoding, resizing and
normalization all happen inside it (see `scdnn_tf/serving/signatures.py` for the signatures), so a
client sends raw JPEG/PNG bytes. The class names travel with the model twice: as the
asset `assets/label_map.txt` (read by the graph's name table) and through the
`class_names` signature.

The model is rebuilt from the model_dir's `config.json` and its latest checkpoint by
`core.restore.restore_for_inference`; for a run with EMA it takes the raw or the averaged
weights, whichever scored higher at the run's last evaluation (or as `weights` says).
The command line front end is `scdnn_tf/export.py`.
"""

from __future__ import annotations

import os

import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf.data.label_map import read_label_map
from scdnn_tf.data.image_headers import DEFAULT_MAX_PIXELS
from scdnn_tf.serving.signatures import SIGNATURE_NAMES, ServingModule
from scdnn_tf.utils import files


def next_version(export_dir: str) -> int:
    """1 + the largest integer-named subdirectory of `export_dir` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir)
                if n.isdigit() and os.path.isdir(os.path.join(export_dir, n))]
    return max(versions, default=0) + 1


def read_thresholds(path: str, class_names: list[str], flag: str = "thresholds") -> np.ndarray:
    """Per-class thresholds from `evaluate --thresholds_out` json, in `class_names` order.

    The file is {"classes": [names], "thresholds": [floats]}; it is matched by name, so a
    file listing the same classes in another order still gives the right thresholds.

    Returns:
      float32 [C] in [0, 1].

    Raises:
      ValueError: `--flag=path: <problem>` for a missing or malformed file (the JSON
        position named), values outside [0, 1], or class names differing from the
        model's (the differences are named).
    """
    with files.flag_errors(flag, path):
        data = files.read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or (
                not isinstance(data.get("thresholds"), list)):
            raise ValueError(f"{path}: expected a JSON object with a 'classes' and a "
                             "'thresholds' list (written by `scdnn-evaluate --thresholds_out`)")
        names, values = data["classes"], data["thresholds"]
        if len(names) != len(values):
            raise ValueError(f"{path}: {len(names)} classes but {len(values)} thresholds")
        wrong = [(i, v) for i, v in enumerate(values)
                 if isinstance(v, bool) or not isinstance(v, (int, float))]
        if wrong:
            raise ValueError(f"{path}: thresholds[{wrong[0][0]}] is not a number "
                             f"({wrong[0][1]!r})")
        missing = sorted(set(class_names) - set(map(str, names)))
        extra = sorted(set(map(str, names)) - set(class_names))
        if missing or extra:
            raise ValueError(f"{path}: does not match the model's label map: "
                             f"missing {missing[:10]}, unknown {extra[:10]}")
        by_name = dict(zip(map(str, names), values))
        thresholds = np.array([float(by_name[n]) for n in class_names], np.float32)
        bad = [n for n, t in zip(class_names, thresholds) if not 0.0 <= t <= 1.0]
        if bad:
            raise ValueError(f"{path}: thresholds outside [0, 1] for {bad[:10]}")
    return thresholds


def export_saved_model(model, class_names, export_dir: str, thresholds=None, top_k: int = 5,
                       version: int | None = None,
                       max_image_pixels: int = DEFAULT_MAX_PIXELS, source: str = "") -> str:
    """Writes `model` as a TF Serving SavedModel in `export_dir/<version>`.

    Args:
      model: a built SCDNN or BaselineClassifier (`model(images)["logits"]` on float32
        [B,S,S,3] in [0,255]; `model.image_size` is S).
      class_names: C names, in the model's class order.
      export_dir: the model's base directory (TF Serving's `--model_base_path`).
      thresholds: None (0.5 for every class) or [C] per-class thresholds.
      top_k: K of the `top_*` outputs (clamped to C).
      version: version directory; default `next_version(export_dir)`.
      max_image_pixels: larger images (height * width) are refused by the signatures.
      source: what is exported (e.g. the checkpoint), named if the disk fills up.

    Returns:
      The written directory `export_dir/<version>`.

    Raises:
      FileExistsError: the version directory exists already.
      files.DiskFullError: the disk filled up; the partial export was removed.
    """
    import keras  # noqa: PLC0415 (keep `--help` fast)

    version = next_version(export_dir) if version is None else int(version)
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists already; pick another --version")
    os.makedirs(export_dir, exist_ok=True)
    # Write next to the target, then rename: TF Serving polls export_dir and must never
    # see a half-written version.
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=export_dir)
    try:
        module = ServingModule(model, class_names, thresholds, top_k, max_image_pixels,
                               label_map_dir=staging)
        archive = keras.export.ExportArchive()
        # Not `archive.track(model)`: the endpoints' variables are tracked automatically,
        # and walking the model fails on FPN's int-keyed layer dict (a SavedModel limit).
        archive.track(module.class_table)  # its label map file becomes assets/label_map.txt
        for name in SIGNATURE_NAMES:
            archive.add_endpoint(name, module.functions[name])
        out = os.path.join(staging, "model")
        archive.write_out(out, verbose=False)
        os.rename(out, target)
    except Exception as e:
        if not files.is_disk_full(e):
            raise
        what = f" of {source}" if source else ""
        raise files.DiskFullError(
            f"no space left on device writing the SavedModel{what} into --export_dir="
            f"{export_dir} (version {version}); the partial export was removed: free space "
            "and run the export again") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("exported %s (signatures %s)", target, ", ".join(SIGNATURE_NAMES))
    return target


def load_from_model_dir(model_dir: str, precision: str = "float32", weights: str = "auto"):
    """The latest checkpoint of a training model_dir and its names.

    Args:
      model_dir: a training run's folder.
      precision: the rebuilt model's compute precision (a `--precision` value; float32
        whatever the run trained in unless asked). Its inputs and outputs stay float32.
      weights: "auto" (the better of the last evaluation's raw / EMA weights, as recorded
        in model_dir; the EMA ones without a record; raw without EMA), "raw" or "ema".

    Returns:
      (model, class_names, checkpoint path).
    """
    from scdnn_tf.core import restore  # noqa: PLC0415 (heavy; only the CLIs need it)
    from scdnn_tf.core.config import TrainConfig  # noqa: PLC0415

    config = TrainConfig.read(model_dir)
    config.model_dir = model_dir  # the directory may have moved since training
    class_names = read_label_map(os.path.join(model_dir, restore.LABEL_MAP_NAME))
    # The default strategy: plain variables, which ExportArchive can save.
    model, _, checkpoint = restore.restore_for_inference(config, len(class_names),
                                                          tf.distribute.get_strategy(), precision,
                                                          weights)
    return model, class_names, checkpoint
