"""Labels for image files: `python -m scdnn_tf.predict --saved_model=DIR/1 IMAGE_OR_FOLDER...`.

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

import os

# Before TensorFlow loads: hide its C++ INFO/WARNING spam (e.g. grappler cost-model
# notes) from the CLI's output; set TF_CPP_MIN_LOG_LEVEL=0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import io
import json
import re
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


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
        from scdnn_tf.serving import ServingModule  # noqa: PLC0415

        with tempfile.TemporaryDirectory() as tmp:  # the name table reads it at creation
            module = ServingModule(model, class_names, thresholds, top_k, label_map_dir=tmp)
        return cls(module.functions["serving_default"], class_names,
                   module.thresholds.numpy())

    @classmethod
    def from_model_dir(cls, model_dir: str, thresholds_path: str = "") -> "Predictor":
        """The latest checkpoint of a training model_dir (EMA weights if used)."""
        from scdnn_tf.export import load_from_model_dir, read_thresholds  # noqa: PLC0415

        model, names, _ = load_from_model_dir(model_dir)
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


# EXIF orientation (tag 0x0112) -> numpy steps giving the displayed image from the stored
# [H, W, 3] pixels, as Pillow's ImageOps.exif_transpose (FLIP_LEFT_RIGHT, ROTATE_180,
# FLIP_TOP_BOTTOM, TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(encoded: bytes) -> int:
    """The EXIF orientation (1..8) of image bytes; 1 when absent or unreadable.

    Reads the header only (Pillow opens lazily).
    """
    import warnings  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # huge images: refused later by the model
            with Image.open(io.BytesIO(encoded)) as image:
                orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 (not an image, damaged EXIF: scored as stored)
        return 1
    return orientation if orientation in _ORIENTATIONS else 1


def upright(encoded: bytes) -> bytes:
    """Image bytes with their EXIF orientation applied (PNG), or unchanged.

    Decoded by the serving code's own `decode_image`, so the pixels are those the
    model would see, only turned; re-encoded as PNG, which is lossless. Bytes that do
    not decode are returned unchanged (the model then reports what is wrong).
    """
    orientation = exif_orientation(encoded)
    if orientation == 1:
        return encoded
    from scdnn_tf.data.preprocess import decode_image  # noqa: PLC0415
    from scdnn_tf.image_headers import header_pixels  # noqa: PLC0415
    from scdnn_tf.serving import DEFAULT_MAX_PIXELS  # noqa: PLC0415

    try:
        if not 0 <= int(header_pixels(encoded)) <= DEFAULT_MAX_PIXELS:
            return encoded  # refused by the model from its header, never decoded here
        pixels = decode_image(encoded).numpy()
    except tf.errors.OpError:
        return encoded
    turned = np.ascontiguousarray(_ORIENTATIONS[orientation](pixels))
    return tf.io.encode_png(turned).numpy()


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
    return Result(path, labels, top, patches)


class _Drawer:
    """Writes OUTDIR/<file stem>.png (a numeric suffix when two inputs share a stem).

    Raises:
      ValueError: OUTDIR cannot be created or written (checked by writing a file, at
        start, not after the first batch).
    """

    def __init__(self, out_dir: str):
        try:
            os.makedirs(out_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=out_dir):
                pass
        except OSError as e:
            raise ValueError(f"--draw={out_dir}: cannot write images there: "
                             f"{e.strerror or e}") from e
        self.out_dir, self.used = out_dir, set()

    def __call__(self, encoded: bytes, result: Result) -> None:
        from PIL import Image  # noqa: PLC0415

        from scdnn_tf import visualize  # noqa: PLC0415
        from scdnn_tf.data.preprocess import decode_image  # noqa: PLC0415

        image = decode_image(encoded).numpy()
        boxes = [p["box"] for p in result.patches] or None
        drawn = visualize.draw_patches(
            image, boxes, [p["context_box"] for p in result.patches] or None,
            [p["score"] for p in result.patches] or None, labels=result.labels[:5],
            line_width=max(1, max(image.shape[:2]) // 300))
        stem = os.path.splitext(os.path.basename(result.path))[0]
        name, k = stem, 1
        while name in self.used:
            name, k = f"{stem}_{k}", k + 1
        self.used.add(name)
        Image.fromarray(drawn).save(os.path.join(self.out_dir, name + ".png"))


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
    draw = _Drawer(draw_dir) if draw_dir else None
    results, failures, start = [], [], time.time()
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
        done = len(results) + len(failures)
        if progress:
            progress.write(f"\r{done}/{len(paths)} images, {len(failures)} failed, "
                           f"{done / max(time.time() - start, 1e-9):.1f} images/s")
            progress.flush()
    if progress:
        progress.write(f"\n{len(results)} images scored, {len(failures)} failed\n")
    return results, failures


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("saved_model", "", "Exported SavedModel version directory (DIR/1).")
    flags.DEFINE_string("model_dir", "", "Or a training model_dir (latest checkpoint).")
    flags.DEFINE_string("thresholds", "", "Per-class thresholds json (evaluate "
                        "--thresholds_out); default: the exported ones, or 0.5.")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_bool("json", False, "One JSON object per image instead of text lines.")
    flags.DEFINE_string("draw", "", "Write each image with its patches drawn to this folder.")


def run(paths: list[str], saved_model: str = "", model_dir: str = "", thresholds: str = "",
        batch_size: int = 32, as_json: bool = False, draw_dir: str = "", out=sys.stdout,
        progress=sys.stderr) -> int:
    """The CLI's work: scores `paths` (files or folders); returns the exit code.

    Returns:
      0 when every file was scored, 1 when any failed (the summary line counts them).

    Raises:
      ValueError: not exactly one of saved_model / model_dir, no image files, or an
        unwritable `draw_dir` (all checked before the model is loaded).
    """
    if bool(saved_model) == bool(model_dir):
        raise ValueError("give exactly one of --saved_model and --model_dir")
    files = list_images(paths)
    if not files:
        raise ValueError("no image files given (pass files or folders)")
    if draw_dir:
        _Drawer(draw_dir)  # fail now, not after loading the model and a first batch
    if saved_model:
        predictor = Predictor.from_saved_model(saved_model)
        if thresholds:
            from scdnn_tf.export import read_thresholds  # noqa: PLC0415
            predictor.thresholds = read_thresholds(thresholds, predictor.class_names)
    else:
        predictor = Predictor.from_model_dir(model_dir, thresholds)
    _, failures = predict_files(predictor, files, batch_size, out=out, as_json=as_json,
                                draw_dir=draw_dir, progress=progress)
    return 1 if failures else 0


def main(argv):
    try:
        return run(argv[1:], FLAGS.saved_model, FLAGS.model_dir, FLAGS.thresholds,
                   FLAGS.batch_size, FLAGS.json, FLAGS.draw)
    except ValueError as e:
        raise app.UsageError(str(e)) from e


if __name__ == "__main__":
    define_flags()
    app.run(main)
