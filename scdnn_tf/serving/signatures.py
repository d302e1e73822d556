"""The exported SavedModel's signatures: raw inputs in, labels and patches out.

Every signature decodes/resizes inside the graph with the training pipeline's own
`decode_image` / `resize_image`, runs the model, and returns (N images, C classes,
K = min(top_k, C), P = the model's patches per image):

  scores [N,C] float32 (sigmoid), labels [N,C] bool (scores >= per-class threshold),
  top_classes [N,K] int32, top_scores [N,K] float32, top_class_names [N,K] string,
  and for SCDNN patch_boxes / context_boxes [N,P,4] (normalized [ymin,xmin,ymax,xmax]),
  patch_scores [N,P] (objectness, best first, 0 for padding), patch_valid [N,P] bool;
  with several context scales also context_weights [N,P,K] (the per-patch gate over the
  K scales) and patch_context_scale [N,P] (the gate-weighted scale of context_boxes).

Signatures (inputs named so that TF Serving's REST/gRPC requests can address them):
  serving_default(image_bytes: string [N])   JPEG/PNG (also GIF/BMP/WebP) file bytes;
  image_tensor(images: uint8 [N,H,W,3])      any H, W (RGB; other channel counts refused);
  tf_example(examples: string [N])           serialized tf.Example (records.py format);
  class_names()                              -> class_names [C] string, thresholds [C].

Bad input fails the request with an InvalidArgumentError "[input 3] [problem]" (or
"[record 3 name]") naming the element, for every kind of failure: empty bytes, not an
image, an unreadable or too-large header, image data damaged past the header (a
truncated JPEG), a record that is not a tf.Example with `image/encoded`. The server
process carries on. Images above `max_pixels` (height * width) are refused from the
file header before anything is decoded, for every accepted format, so a tiny GIF or
WebP declaring 20000x20000 costs no memory. The pixels are used as stored: EXIF
orientation is not applied (clients send upright pixels).
"""

from __future__ import annotations

import os

import tensorflow as tf

from scdnn_tf.data.preprocess import decode_image, resize_image
from scdnn_tf.data.records import parse_example
from scdnn_tf.data.image_headers import DEFAULT_MAX_PIXELS, NO_SIZE, NOT_AN_IMAGE, header_pixels
from scdnn_tf.evaluation.thresholds import logit_threshold

SIGNATURE_NAMES = ("serving_default", "image_tensor", "tf_example", "class_names")
PATCH_KEYS = ("patch_boxes", "context_boxes", "patch_scores", "context_weights",
              "patch_context_scale")
_FORMATS = "a JPEG/PNG/GIF/BMP/WebP image"


def _plain_options() -> tf.data.Options:
    # A fresh iterator per request: tf.data's graph rewrites and autotuning would cost
    # more than the work (seconds, versus milliseconds without them).
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return options


_PLAIN = _plain_options()


def map_naming_failures(fn, elements, contexts: tf.Tensor, problem: str, output_spec):
    """`fn` on each element, in order; a failing element fails the call naming it.

    A TF op error inside `fn` (e.g. a truncated JPEG) names no element. Running `fn` in a
    tf.data map with `ignore_errors` drops the failing elements; the missing index then
    tells which one failed, and the assertion names it.

    Args:
      fn: element -> tensor of `output_spec`. elements: a tensor (or nest) with N rows.
      contexts: string [N], how each element is named in the error ("input 3").
      problem: what the error says about the failed element.
      output_spec: tf.TensorSpec of one output.

    Returns:
      the stacked outputs [N, ...].

    Raises (at run time):
      InvalidArgumentError: "[<context>] [<problem>]" for the first failing element.
    """
    n = tf.shape(contexts, out_type=tf.int64)[0]
    dataset = (tf.data.Dataset.from_tensor_slices((tf.range(n), elements))
               .map(lambda i, x: (i, fn(x)))
               .ignore_errors()
               .batch(tf.maximum(n, 1))
               .with_options(_PLAIN))
    shape = [None] + output_spec.shape.as_list()
    empty = (tf.zeros([0], tf.int64), tf.zeros([0] + [d or 0 for d in shape[1:]],
                                                output_spec.dtype))
    done, outputs = dataset.reduce(empty, lambda _, batch: batch)
    ok = tf.tensor_scatter_nd_update(tf.zeros([n], tf.bool), done[:, None],
                                     tf.ones_like(done, tf.bool))
    first = tf.argmin(tf.cast(ok, tf.int32))
    check = tf.debugging.Assert(tf.reduce_all(ok), [tf.gather(contexts, first), problem])
    with tf.control_dependencies([check]):
        outputs = tf.identity(outputs)
    outputs.set_shape(shape)
    return outputs


def _assert_none(bad: tf.Tensor, contexts: tf.Tensor, message: list):
    """Assert that no element is `bad` [N]; names the first one (message: extra data)."""
    first = tf.argmax(tf.cast(bad, tf.int32))
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)),
                               [tf.gather(contexts, first)] + [
                                   tf.gather(m, first) if isinstance(m, tf.Tensor) else m
                                   for m in message], summarize=8)


def check_encoded(encoded: tf.Tensor, contexts: tf.Tensor, max_pixels: int) -> list:
    """Assertions on encoded images [N] before any is decoded, each naming the element.

    Empty bytes, bytes of no accepted format, an unreadable header (JPEG markers, a file
    shorter than its format's header), and more than `max_pixels` (height * width, read
    from the header, so a decompression bomb is never decoded).

    Returns:
      the list of assertion ops (run them before decoding).
    """
    length = tf.strings.length(encoded)
    not_empty = _assert_none(tf.equal(length, 0), contexts, ["is empty (0 bytes), not an image"])
    with tf.control_dependencies([not_empty]):
        pixels = tf.map_fn(header_pixels, encoded, fn_output_signature=tf.int64)
    first_bytes = tf.strings.substr(encoded, 0, 8)  # pos 0: valid for any length
    known = _assert_none(tf.equal(pixels, NOT_AN_IMAGE), contexts,
                         [f"is not {_FORMATS}: length", length, "first bytes", first_bytes])
    with tf.control_dependencies([known]):
        sized = _assert_none(tf.equal(pixels, NO_SIZE), contexts, [
            "is damaged or truncated: its header holds no image size (length", length,
            "bytes)"])
    with tf.control_dependencies([sized]):
        small = _assert_none(pixels > max_pixels, contexts, [
            "image header declares", pixels, (f"pixels (height * width), above the limit of "
                                              f"{max_pixels} (export --max_image_pixels)")])
    return [not_empty, known, sized, small]


def decode_batch(encoded: tf.Tensor, contexts: tf.Tensor, image_size: int,
                 max_pixels: int) -> tf.Tensor:
    """Encoded images [N] -> float32 [N,S,S,3] in [0,255]; each failure names its element.

    Raises (at run time) InvalidArgumentError: see `check_encoded`, and "could not be
    decoded" for image data damaged past the header.
    """
    with tf.control_dependencies(check_encoded(encoded, contexts, max_pixels)):
        encoded = tf.identity(encoded)
    return map_naming_failures(
        lambda e: resize_image(decode_image(e), image_size), encoded, contexts,
        "could not be decoded: the image data is damaged or truncated",
        tf.TensorSpec([image_size, image_size, 3], tf.float32))


def _assert_pixels(pixels, max_pixels: int, where, what: str):
    return tf.debugging.Assert(
        pixels <= max_pixels,
        [where, f"{what} has", pixels, f"pixels (height * width), above the limit of "
         f"{max_pixels} (export --max_image_pixels)"])


def _assert_not_empty_batch(n, name):
    return tf.debugging.Assert(n > 0, [f"{name}: empty batch, send at least one image"])


def postprocess(logits, logit_cuts, class_names, top_k: int) -> dict:
    """Scores, thresholded labels and top-k classes from image logits.

    Labels and the top-k order come from the logits: the float32 sigmoid rounds to 1.0
    above ~16.6, which would tie confident classes (and order them by class index).

    Args:
      logits: [N,C] (any float dtype). logit_cuts: [C] float64, `logit_threshold` of the
        probability thresholds (label = sigmoid(logit) >= threshold, decided exactly).
      class_names: [C] string. top_k: K (clamped to C; static).

    Returns:
      dict: scores [N,C] float32, labels [N,C] bool, top_classes [N,K] int32,
      top_scores [N,K] float32, top_class_names [N,K] string (best first).
    """
    logits = tf.cast(logits, tf.float32)
    scores = tf.sigmoid(logits)
    k = min(int(top_k), int(scores.shape[-1]))
    _, top_classes = tf.math.top_k(logits, k=k)
    return {"scores": scores, "labels": tf.cast(logits, tf.float64) >= logit_cuts,
            "top_classes": top_classes,
            "top_scores": tf.gather(scores, top_classes, batch_dims=1),
            "top_class_names": tf.gather(class_names, top_classes)}


class ServingModule:
    """The serving tf.functions for one model (used by export and by in-process predict).

    Args:
      model: `model(images [B,S,S,3] float32 in [0,255])` returns a dict with `logits`
        (and for SCDNN the patch outputs); `model.image_size` is S.
      class_names: C names. thresholds: None (0.5) or [C] floats. top_k: K.
      max_image_pixels: the per-image height * width limit.
      label_map_dir: where to write `label_map.txt`, the file behind the name table (and
        the SavedModel's asset). It must exist until the model is saved.

    Attributes:
      functions: {signature name: tf.function with an input signature}.
      class_table: the StaticHashTable index -> class name (to be tracked by the export).
    """

    def __init__(self, model, class_names, thresholds=None, top_k: int = 5,
                 max_image_pixels: int = DEFAULT_MAX_PIXELS, label_map_dir: str = ""):
        class_names = [str(n) for n in class_names]
        if not class_names or any(not n or "\n" in n for n in class_names):
            raise ValueError(f"class_names must be non-empty single-line names, got "
                             f"{class_names[:10]!r}")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        if int(max_image_pixels) < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {max_image_pixels!r}")
        num_classes = len(class_names)
        thresholds = [0.5] * num_classes if thresholds is None else [float(t) for t in thresholds]
        if len(thresholds) != num_classes:
            raise ValueError(f"{len(thresholds)} thresholds for {num_classes} classes")
        self.model, self.top_k = model, int(top_k)
        self.image_size, self.max_pixels = int(model.image_size), int(max_image_pixels)
        self.thresholds = tf.constant(thresholds, tf.float32)
        self.logit_cuts = tf.constant(logit_threshold(self.thresholds.numpy()), tf.float64)
        self.class_table = self._make_table(class_names, label_map_dir)
        # One traced model graph shared by the three signatures (not three copies).
        self._run = tf.function(self._run_model, input_signature=[tf.TensorSpec(
            [None, self.image_size, self.image_size, 3], tf.float32)])
        self.functions = {
            "serving_default": tf.function(self.from_bytes, input_signature=[
                tf.TensorSpec([None], tf.string, name="image_bytes")]),
            "image_tensor": tf.function(self.from_images, input_signature=[
                tf.TensorSpec([None, None, None, None], tf.uint8, name="images")]),
            "tf_example": tf.function(self.from_examples, input_signature=[
                tf.TensorSpec([None], tf.string, name="examples")]),
            "class_names": tf.function(self.metadata, input_signature=[]),
        }

    @staticmethod
    def _make_table(class_names, label_map_dir):
        if not label_map_dir:
            raise ValueError("label_map_dir is required (the label map file backs the names)")
        path = os.path.join(label_map_dir, "label_map.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in class_names))
        # A TextFileInitializer registers its file as a SavedModel asset.
        init = tf.lookup.TextFileInitializer(
            path, key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE)
        return tf.lookup.StaticHashTable(init, default_value="")

    def _class_names(self):
        return self.class_table.lookup(tf.range(self.thresholds.shape[0], dtype=tf.int64))

    def _run_model(self, images):
        outputs = self.model(images, training=False)
        result = postprocess(outputs["logits"], self.logit_cuts, self._class_names(), self.top_k)
        result.update({k: tf.cast(outputs[k], tf.float32) for k in PATCH_KEYS if k in outputs})
        if "patch_valid" in outputs:
            result["patch_valid"] = tf.cast(outputs["patch_valid"], tf.bool)
        return result

    def _decode_batch(self, encoded, contexts):
        return decode_batch(encoded, contexts, self.image_size, self.max_pixels)

    def from_bytes(self, image_bytes):
        """string [N] encoded images -> outputs."""
        n = tf.size(image_bytes)
        # Everything downstream reads the gated copy: the per-element checks reduce over
        # the batch (argmax), which would fail first on an empty one with TF's own message.
        with tf.control_dependencies([_assert_not_empty_batch(n, "image_bytes")]):
            image_bytes = tf.identity(image_bytes)
            contexts = tf.strings.join(["input ", tf.strings.as_string(tf.range(n))])
        return self._run(self._decode_batch(image_bytes, contexts))

    def from_images(self, images):
        """uint8 [N,H,W,3] -> outputs (all N images share H and W).

        The input spec leaves the channel count open so that a wrong one (RGBA, gray)
        reaches this check and its message instead of a shape error deep in the model.
        """
        shape = tf.shape(images, out_type=tf.int64)
        rgb = tf.debugging.Assert(
            tf.logical_and(tf.equal(tf.size(shape), 4), tf.equal(shape[-1], 3)),
            ["images: expected uint8 [N, H, W, 3] (RGB), got shape", shape,
             "(convert RGBA or grayscale images to 3-channel RGB first)"], summarize=8)
        with tf.control_dependencies([rgb]):
            checks = [_assert_not_empty_batch(shape[0], "images"),
                      tf.debugging.Assert(tf.reduce_all(shape[1:3] > 0),
                                          ["images: height and width must be > 0, got", shape]),
                      _assert_pixels(shape[1] * shape[2], self.max_pixels, "images",
                                     "each image")]
        with tf.control_dependencies(checks):
            images = tf.ensure_shape(images, [None, None, None, 3])
            return self._run(resize_image(images, self.image_size))

    def from_examples(self, examples):
        """string [N] serialized tf.Example -> outputs (image from `image/encoded`)."""
        n = tf.size(examples)
        with tf.control_dependencies([_assert_not_empty_batch(n, "examples")]):
            examples = tf.identity(examples)  # gated, as in from_bytes
            indices = tf.strings.as_string(tf.range(n))
        # Parsed element by element so that a bad record is named (a batched parse error
        # names none); encoded and file name travel as one [2] string tensor.
        parsed = map_naming_failures(
            lambda s: tf.stack([parse_example(s)[k] for k in ("encoded", "filename")]),
            examples, tf.strings.join(["record ", indices]),
            "is not a serialized tf.Example with an image/encoded feature",
            tf.TensorSpec([2], tf.string))
        contexts = tf.strings.join(["record ", indices, " ", parsed[:, 1]])
        return self._run(self._decode_batch(parsed[:, 0], contexts))

    def metadata(self):
        """-> class_names [C] string, thresholds [C] float32."""
        return {"class_names": self._class_names(), "thresholds": tf.identity(self.thresholds)}
