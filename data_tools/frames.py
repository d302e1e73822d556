"""The frame a converter's boxes are in: declared size vs file size, EXIF orientation.

Pixel boxes are in the frame the annotation file declares. A file that is a uniform
rescale of it (a resized image folder) is normalized by the declared size; any other
mismatch matches no frame (the converter skips the image). Labelling tools show, and
label, the EXIF-rotated frame while TensorFlow's decoders ignore EXIF, so an image whose
labels are in the rotated frame is re-encoded upright. Runs in the converter's forked
workers: Pillow only, no TensorFlow.
"""

from __future__ import annotations

import dataclasses

from data_tools import image_checks


def is_uniform_rescale(declared_hw, actual_hw) -> bool:
    """True if `actual_hw` is `declared_hw` scaled by one factor (within 1 px rounding)."""
    (dh, dw), (ah, aw) = declared_hw, actual_hw
    if min(dh, dw, ah, aw) <= 0:
        return False
    return abs(dw * ah / dh - aw) <= 1.0 or abs(dh * aw / dw - ah) <= 1.0


@dataclasses.dataclass(frozen=True)
class Frame:
    """The frame an image's boxes are in: `hw` (height, width) to normalize pixel boxes
    by, whether the EXIF orientation is applied (`upright`), `rescaled`: the file is a
    uniform rescale of the declared size, and the file's EXIF `orientation` tag."""
    hw: tuple[int, int]
    upright: bool
    rescaled: bool = False
    orientation: int = 1


def choose_frame(declared_hw, normalized: bool,
                 image: image_checks.LoadedImage) -> Frame | None:
    """Picks the frame the labels were drawn in; None if the file matches no frame.

    Labelling tools show (and label) the EXIF-rotated frame, so it comes first: always
    for normalized boxes or without a declared size; for a declared size, the rotated
    frame if the size matches it, else the stored frame; then either as a uniform
    rescale of the declared size.
    """
    rotated, tag = image.orientation != 1, image.orientation
    if declared_hw is None or normalized:
        return Frame(image.displayed_hw, rotated, orientation=tag)
    declared = (int(declared_hw[0]), int(declared_hw[1]))
    frames = ([(image.displayed_hw, True)] if rotated else []) + [
        ((image.height, image.width), False)]
    for hw, upright in frames:
        if hw == declared:
            return Frame(declared, upright, orientation=tag)
    for hw, upright in frames:
        if is_uniform_rescale(declared, hw):
            return Frame(declared, upright, rescaled=True, orientation=tag)
    return None


def load_framed(arg, max_side: int = image_checks.DEFAULT_MAX_SIDE,
                check: str = "structure"):
    """Worker: (path, declared_hw, normalized) -> (LoadedImage | ImageProblem, Frame | None).

    The image is re-encoded upright here (in the worker) when the frame says so."""
    path, declared_hw, normalized = arg
    image = image_checks.load_image(path, max_side=max_side, check=check)
    if isinstance(image, image_checks.ImageProblem):
        return image, None
    frame = choose_frame(declared_hw, normalized, image)
    if frame is not None and frame.upright and image.orientation != 1:
        return image_checks.upright(image), frame
    return image, frame
