"""The prediction library: labels for image files from a SavedModel or a training run.

The command line front end is `scdnn_tf/predict.py`
(`python -m scdnn_tf.predict --saved_model=DIR/1 IMAGE_OR_FOLDER...`).

Prints one line per image with the labels at or above their threshold, best first, as on
the paper's poster (`photo.jpg: person 0.999, car 0.989, backpack 0.604`); `--json` prints
one JSON object per line instead; `--draw=OUTDIR` writes each image with its tight
(green) and context (orange) patches drawn. The model is an exported SavedModel
(`--saved_model`, its `serving_default` signature) or a training model_dir
(`--model_dir`, latest checkpoint, through the very same serving functions).

Files are read by a tf.data pipeline (prefetched while the model runs) and scored in
batches of `--batch_size`; a progress line goes to stderr. A file that cannot be read or
is not an image is reported with what is wrong with it (the batch holding it is
rescored image by image) and the rest go on; the counts are printed at the end, and the
exit code is 1 when any file failed. A photo with an EXIF orientation (phones store
pixels unrotated plus a tag) is scored upright, as it is displayed: the orientation is
applied before scoring, with Pillow's `ImageOps.exif_transpose` semantics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile

import numpy as np
import tensorflow as tf

from scdnn_tf.evaluation import visualize
from scdnn_tf.data.orientation import upright
from scdnn_tf.utils.progress import Progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


class UsageError(ValueError):
    """The command line itself is wrong (not a file it names): the tool shows its usage."""


class Predictor:
    """encoded image bytes [N] -> numpy outputs of the `serving_default` signature.

    Build it with `from_saved_model` or `from_model_dir`. Attributes: `class_names` [C],
    `thresholds` float32 [C].
    """

    def __init__(self, fn, class_names, thresholds):
        self._fn, self.class_names = fn, [str(n) for n in class_names]
        self.thresholds = np.asarray(thresholds, np.float32)

    def __call__(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
        outputs = self._fn(tf.constant(encoded, tf.string))
        return {k: v.numpy() for k, v in outputs.items()}

    @classmethod
    def from_saved_model(cls, path: str) -> "Predictor":
        """An exported version directory (its class names and thresholds)."""
        loaded = tf.saved_model.load(path)
        meta = loaded.signatures["class_names"]()
        names = [n.decode("utf-8") for n in meta["class_names"].numpy()]
        signature = loaded.signatures["serving_default"]
        predictor = cls(lambda x: signature(image_bytes=x), names, meta["thresholds"].numpy())
        predictor._loaded = loaded  # keep the SavedModel's resources alive
        return predictor

    @classmethod
    def from_model(cls, model, class_names, thresholds=None, top_k: int = 5) -> "Predictor":
        """A Keras model, through the exported signatures' own code (`ServingModule`)."""
        from scdnn_tf.serving.signatures import ServingModule  # noqa: PLC0415

        with tempfile.TemporaryDirectory() as tmp:  # the name table reads it at creation
            module = ServingModule(model, class_names, thresholds, top_k, label_map_dir=tmp)
        return cls(module.functions["serving_default"], class_names,
                   module.thresholds.numpy())

    @classmethod
    def from_model_dir(cls, model_dir: str, thresholds_path: str = "",
                       precision: str = "float32") -> "Predictor":
        """The latest checkpoint of a training model_dir (EMA weights if used), computing in
        `precision` (a `--precision` value)."""
        from scdnn_tf.serving.exporter import load_from_model_dir, read_thresholds  # noqa: PLC0415

        model, names, _ = load_from_model_dir(model_dir, precision)
        thresholds = read_thresholds(thresholds_path, names) if thresholds_path else None
        return cls.from_model(model, names, thresholds)


def list_images(paths: list[str]) -> list[str]:
    """Files named on the command line (any name) and image files found under folders."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names)
                             if n.lower().endswith(IMAGE_EXTENSIONS))
        else:
            files.append(path)
    return files


def _read_files(paths):
    """Yields (path, bytes, error); a file that cannot be read gives b"" and the error."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                yield path, f.read(), ""
        except OSError as e:
            yield path, b"", f"cannot read: {e.strerror or e}"


def make_dataset(paths: list[str], batch_size: int) -> tf.data.Dataset:
    """Batches of (path [B], bytes [B], read error [B]) strings, read ahead of the model."""
    spec = tf.TensorSpec([], tf.string)
    return (tf.data.Dataset.from_generator(lambda: _read_files(paths),
                                           output_signature=(spec, spec, spec))
            .batch(batch_size).prefetch(2))


# TF's decorations of an op error: graph node and function names, op names.
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:[^\]]*\]")


def _short_error(error: tf.errors.OpError) -> str:
    """What is wrong with one file, from a serving signature's error.

    The signature's assertions read "[input 0] [is empty (0 bytes), not an image]": the
    bracketed parts without the batch index (predict names the file). Other errors:
    their first line without TF's node and function names.
    """
    text = error.message
    asserted = re.search(r"assertion failed: (.*)", text)
    if asserted:
        parts = re.findall(r"\[([^\[\]]*)\]", _TF_NOISE.sub("", asserted.group(1)))
        if parts and re.fullmatch(r"input \d+", parts[0]):
            parts = parts[1:]
        return " ".join(p.strip() for p in parts if p.strip())
    lines = [_TF_NOISE.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Detected at node",
                                                                     "Graph execution"))]
    return lines[0] if lines else type(error).__name__


@dataclasses.dataclass
class Result:
    """One image's prediction: labels at/above threshold (name, score), best first."""
    path: str
    labels: list
    top: list
    patches: list

    def line(self) -> str:
        text = ", ".join(f"{n} {s:.3f}" for n, s in self.labels) or "(no label above threshold)"
        return f"{self.path}: {text}"


def make_result(path: str, outputs: dict, i: int, predictor: Predictor) -> Result:
    """Result for row i of a batch of signature outputs."""
    scores = outputs["scores"][i]
    above = np.flatnonzero(scores >= predictor.thresholds)
    above = above[np.argsort(-scores[above], kind="stable")]
    labels = [(predictor.class_names[c], float(scores[c])) for c in above]
    top = [(n.decode("utf-8"), float(s))
           for n, s in zip(outputs["top_class_names"][i], outputs["top_scores"][i])]
    patches = []
    if "patch_boxes" in outputs:
        for p in np.flatnonzero(outputs["patch_valid"][i]):
            patches.append({"box": outputs["patch_boxes"][i, p].round(4).tolist(),
                            "context_box": outputs["context_boxes"][i, p].round(4).tolist(),
                            "score": round(float(outputs["patch_scores"][i, p]), 4)})
            if "context_weights" in outputs:  # adaptive context: what the gate chose
                patches[-1]["context_weights"] = outputs["context_weights"][i, p].round(4).tolist()
                patches[-1]["context_scale"] = round(float(outputs["patch_context_scale"][i, p]),
                                                     3)
    return Result(path, labels, top, patches)


def predict_files(predictor: Predictor, paths: list[str], batch_size: int = 32,
                  out=sys.stdout, as_json: bool = False, draw_dir: str = "",
                  progress=sys.stderr) -> tuple[list[Result], list[tuple[str, str]]]:
    """Scores image files in batches, printing a line (or JSON object) per image.

    Images with an EXIF orientation are scored (and drawn) upright (`upright`).

    Returns:
      (results for the images scored, in input order; [(path, error)] for the others).

    Raises:
      ValueError: batch_size < 1, or `draw_dir` cannot be written (before any scoring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    draw = visualize.PatchImageWriter(draw_dir) if draw_dir else None
    results, failures = [], []
    bar = Progress(len(paths), "predicting", unit="images", stream=progress) if progress else None
    for batch in make_dataset(paths, batch_size):
        names, data, errors = (t.numpy().tolist() for t in batch)
        names = [n.decode("utf-8", "replace") for n in names]
        data = [upright(d) if d else d for d in data]
        rows = {i: e.decode("utf-8") for i, e in enumerate(errors) if e}  # i -> Result or error
        good = [i for i in range(len(names)) if i not in rows]
        try:  # the common case: the whole batch in one call
            scored = [(good, predictor([data[i] for i in good]))] if good else []
        except tf.errors.InvalidArgumentError:  # find the bad images one by one
            scored = []
            for i in good:
                try:
                    scored.append(([i], predictor([data[i]])))
                except tf.errors.InvalidArgumentError as e:
                    rows[i] = _short_error(e)
        for indices, outputs in scored:
            for j, i in enumerate(indices):
                rows[i] = make_result(names[i], outputs, j, predictor)
        for i in sorted(rows):  # input order
            row = rows[i]
            if isinstance(row, Result):
                results.append(row)
                out.write((json.dumps(dataclasses.asdict(row)) if as_json else row.line()) + "\n")
                if draw:
                    draw(data[i], row)
            else:
                failures.append((names[i], row))
                out.write((json.dumps({"path": names[i], "error": row}) if as_json
                           else f"{names[i]}: ERROR {row}") + "\n")
        if bar:
            bar.update(len(names))
    if bar:
        bar.close()
        progress.write(f"{len(results)} images scored, {len(failures)} failed\n")
    return results, failures


def run_prediction(paths: list[str], saved_model: str = "", model_dir: str = "", thresholds: str = "",
        batch_size: int = 32, as_json: bool = False, draw_dir: str = "", out=sys.stdout,
        progress=sys.stderr, precision: str = "") -> int:
    """The CLI's work: scores `paths` (files or folders); returns the exit code.

    `precision` (a `--precision` value, "" = float32) applies to a model_dir; a SavedModel
    computes in the precision it was exported with.

    Returns:
      0 when every file was scored, 1 when any failed (the summary line counts them).

    Raises:
      ValueError: not exactly one of saved_model / model_dir, a precision with
        saved_model, no image files, or an unwritable `draw_dir` (all checked before the
        model is loaded).
    """
    if bool(saved_model) == bool(model_dir):
        raise UsageError("give exactly one of --saved_model and --model_dir")
    if saved_model and precision:
        raise UsageError(f"--precision={precision} applies to --model_dir; a SavedModel "
                         "computes in the precision it was exported with "
                         "(scdnn-export --precision)")
    files = list_images(paths)
    if not files:
        raise UsageError("no image files given (pass files or folders)")
    if draw_dir:
        visualize.PatchImageWriter(draw_dir)  # fail now, not after loading the model and a first batch
    if saved_model:
        predictor = Predictor.from_saved_model(saved_model)
        if thresholds:
            from scdnn_tf.serving.exporter import read_thresholds  # noqa: PLC0415
            predictor.thresholds = read_thresholds(thresholds, predictor.class_names)
    else:
        predictor = Predictor.from_model_dir(model_dir, thresholds, precision or "float32")
    _, failures = predict_files(predictor, files, batch_size, out=out, as_json=as_json,
                                draw_dir=draw_dir, progress=progress)
    return 1 if failures else 0


