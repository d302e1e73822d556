"""Drawing SCDNN's patches and top labels on images (Pillow), for TensorBoard and predict.

Tight (object) patches are drawn in one colour, their expanded context patches in another,
so a viewer sees both of what each label predictor looked at; the top labels with their
scores are written in the top-left corner. Boxes are `[ymin, xmin, ymax, xmax]` normalized.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TIGHT_COLOR = (0, 230, 64)      # green: object patches (patch generator 1)
PATCH_OUTPUTS = ("patch_boxes", "context_boxes", "patch_scores", "patch_context_scale")
CONTEXT_COLOR = (255, 140, 0)   # orange: context patches (patch generator 2)
TEXT_COLOR = (255, 255, 255)
TEXT_BACKGROUND = (0, 0, 0)


def to_uint8_image(image) -> np.ndarray:
    """[H,W,3] float in [0,255] (the model's input) or uint8 -> uint8 [H,W,3] (clipped)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H,W,3], got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    return np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)


def top_labels(scores, class_names, k: int = 3, min_score: float = 0.0) -> list[tuple[str, float]]:
    """The k highest-scoring (name, score) pairs with score >= min_score, best first.

    Args:
      scores: [C] probabilities. class_names: C names.
    """
    scores = np.asarray(scores, np.float64)
    if scores.shape != (len(class_names),):
        raise ValueError(f"scores shape {scores.shape} does not match {len(class_names)} classes")
    order = np.argsort(-scores, kind="stable")[:k]
    return [(class_names[i], float(scores[i])) for i in order if scores[i] >= min_score]


def _pixel_rect(box, width: int, height: int) -> tuple[float, float, float, float]:
    # Normalized y maps to y*(H-1) (the crop_and_resize convention), so 0 and 1 are the
    # first and last pixel rows and the rectangle stays inside the image.
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    return (xmin * (width - 1), ymin * (height - 1), xmax * (width - 1), ymax * (height - 1))


def draw_patches(image, patch_boxes=None, context_boxes=None, patch_scores=None,
                 patch_context_scale=None, labels=(), max_patches: int = 5, min_patch_score: float = 0.0,
                 scale: int = 1, line_width: int = 1) -> np.ndarray:
    """Draws tight patches, their context patches and the top labels on one image.

    Args:
      image: [H,W,3] uint8, or float in [0,255] (the model's input).
      patch_boxes: [N,4] normalized yxyx tight boxes, or None.
      context_boxes: [N,4] normalized yxyx expanded boxes (row n belongs to patch n), or None.
      patch_scores: [N] objectness in [0,1]; patches are drawn best first, at most
        `max_patches` with score >= min_patch_score. None = the first max_patches rows.
      patch_context_scale: [N] context scale each patch chose (adaptive context), printed
        as "x2.7" at its context box's corner; None = not printed.
      labels: (name, score) pairs to print, e.g. from `top_labels`.
      max_patches: how many patches (and their context boxes) to draw.
      min_patch_score: skip patches below this objectness.
      scale: integer upscaling before drawing (nearest), so small demo images stay legible.
      line_width: rectangle outline in pixels (after scaling).

    Returns:
      uint8 [H*scale, W*scale, 3].
    """
    if int(scale) < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    pil = Image.fromarray(to_uint8_image(image))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    width, height = pil.size
    order = _patch_order(patch_boxes, patch_scores, max_patches, min_patch_score)
    # Context first, so a tight box sharing an edge with its context box stays visible.
    for boxes, color in ((context_boxes, CONTEXT_COLOR), (patch_boxes, TIGHT_COLOR)):
        if boxes is None:
            continue
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        for n in order:
            draw.rectangle(_pixel_rect(boxes[n], width, height), outline=color, width=line_width)
    if patch_context_scale is not None and context_boxes is not None:
        corners = np.asarray(context_boxes, np.float64).reshape(-1, 4)
        chosen = np.asarray(patch_context_scale, np.float64).reshape(-1)
        font = ImageFont.load_default()
        for n in order:
            x0, y0 = _pixel_rect(corners[n], width, height)[:2]
            draw.text((x0 + 1, y0), f"x{chosen[n]:.1f}", fill=CONTEXT_COLOR, font=font)
    _draw_labels(draw, labels)
    return np.asarray(pil, dtype=np.uint8)


def _patch_order(patch_boxes, patch_scores, max_patches, min_patch_score) -> list[int]:
    """Indices of the patches to draw, best objectness first."""
    if patch_boxes is None:
        return []
    n = np.asarray(patch_boxes).reshape(-1, 4).shape[0]
    if patch_scores is None:
        return list(range(min(n, max_patches)))
    scores = np.asarray(patch_scores, np.float64).reshape(-1)
    if scores.shape[0] != n:
        raise ValueError(f"{scores.shape[0]} patch scores for {n} patch boxes")
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:max_patches] if scores[i] >= min_patch_score]


def _draw_labels(draw: ImageDraw.ImageDraw, labels) -> None:
    font = ImageFont.load_default()
    y = 1
    for name, score in labels:
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((2, y), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=TEXT_BACKGROUND)
        draw.text((2, y), text, fill=TEXT_COLOR, font=font)
        y = bottom + 2


def draw_batch(images, outputs: dict, class_names, k: int = 3, **kwargs) -> np.ndarray:
    """`draw_patches` over a batch of model outputs.

    Args:
      images: [B,H,W,3] float in [0,255] or uint8.
      outputs: numpy model outputs: `scores` [B,C] probabilities (required), and
        optionally `patch_boxes` [B,N,4], `context_boxes` [B,N,4], `patch_scores` [B,N],
        `patch_context_scale` [B,N].
      class_names: C names. k: labels printed per image.
      **kwargs: passed to `draw_patches` (max_patches, scale, ...).

    Returns:
      uint8 [B, H*scale, W*scale, 3].
    """
    drawn = []
    for b in range(len(images)):
        extra = {key: outputs[key][b] for key in PATCH_OUTPUTS if key in outputs}
        drawn.append(draw_patches(images[b], labels=top_labels(outputs["scores"][b], class_names, k),
                                  **extra, **kwargs))
    return np.stack(drawn)


class PatchImageWriter:
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

    def __call__(self, encoded: bytes, result) -> None:
        """Draws `result` (a prediction.Result: labels, patches) on the decoded image."""
        from scdnn_tf.data.preprocess import decode_image  # noqa: PLC0415

        image = decode_image(encoded).numpy()
        boxes = [p["box"] for p in result.patches] or None
        drawn = draw_patches(
            image, boxes, [p["context_box"] for p in result.patches] or None,
            [p["score"] for p in result.patches] or None,
            [p["context_scale"] for p in result.patches if "context_scale" in p] or None,
            labels=result.labels[:5],
            line_width=max(1, max(image.shape[:2]) // 300))
        stem = os.path.splitext(os.path.basename(result.path))[0]
        name, k = stem, 1
        while name in self.used:
            name, k = f"{stem}_{k}", k + 1
        self.used.add(name)
        Image.fromarray(drawn).save(os.path.join(self.out_dir, name + ".png"))
