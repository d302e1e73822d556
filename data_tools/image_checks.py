"""Loading and checking one image file for a converter (runs in worker processes).

This module imports only Pillow (never TensorFlow) because it runs in forked workers.
The bytes are kept exactly as read (no re-encoding, except `upright` for an EXIF
orientation, which the converter decides on); the format is detected from the bytes
(a PNG named `.jpg` is stored as PNG). Truncated or corrupt files are caught here, not
in the middle of training, by one of two checks (`check`):

- "structure" (default): the file's structure is checked against what TensorFlow's
  decoders treat as fatal, without decoding pixels (`jpeg_structure`, `png_structure`;
  a JPEG feature outside that check, e.g. arithmetic coding, falls back to "decode").
- "decode": the whole image is decoded with Pillow (a JPEG at 1/8 scale in the DCT
  domain: all of its coded data is still read). Slower, and Pillow accepts some files
  TensorFlow rejects (a damaged JPEG EOI, a bad PNG IEND CRC).

Policy for very large images: an image whose larger side exceeds `max_side` (default
10,000 px) is SKIPPED (counted, named in the summary) before it is decoded. Such an
image costs hundreds of MB to decode at every epoch only to be resized to a few hundred
pixels; it is almost always a scan or panorama that does not belong in the set.
Converters expose `--max_image_side` to raise the limit.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings

from PIL import Image, ImageOps

from data_tools import jpeg_structure, png_structure

DEFAULT_MAX_SIDE = 10_000
CHECKS = ("structure", "decode")  # `load_image(check=...)`, the converters' --image_check
DECODE_NEEDED = "decode"  # `structure_problem`: the structure check cannot tell

# Skip reasons (stable strings: they key the summary and the tests).
MISSING = "missing image file"
EMPTY = "empty image file (0 bytes)"
UNSUPPORTED = "unsupported image format"
CORRUPT = "undecodable image (truncated or corrupt)"
TOO_LARGE = "image too large"

_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"))


@dataclasses.dataclass
class LoadedImage:
    """A checked image: original bytes, real format and size in pixels."""
    encoded: bytes
    image_format: str  # "jpeg" or "png"
    height: int
    width: int
    mode: str  # Pillow mode, e.g. "RGB", "L", "CMYK", "I;16"
    orientation: int = 1  # EXIF orientation tag (1 = upright; TF decoders ignore it)

    @property
    def displayed_hw(self) -> tuple[int, int]:
        """(height, width) as viewers show it: EXIF orientations 5..8 swap the sides."""
        if self.orientation in (5, 6, 7, 8):
            return self.width, self.height
        return self.height, self.width


@dataclasses.dataclass
class ImageProblem:
    """Why an image cannot be used: `reason` (one of the constants) and a detail."""
    reason: str
    detail: str


def sniff_format(data: bytes) -> str | None:
    """Returns "jpeg" or "png" from the file signature, or None for anything else."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def structure_problem(data: bytes, image_format: str) -> str | None:
    """Why TensorFlow's decoder would reject `data`: a message, None if it is sound, or
    `DECODE_NEEDED` for a JPEG feature outside the structure check."""
    if image_format == "png":
        return png_structure.png_problem(data)
    try:
        return jpeg_structure.jpeg_problem(data)
    except jpeg_structure.NotCovered:
        return DECODE_NEEDED


def load_image(path: str, max_side: int = DEFAULT_MAX_SIDE,
               check: str = "structure") -> LoadedImage | ImageProblem:
    """Reads and checks `path`; returns a `LoadedImage` or an `ImageProblem`.

    `check` is "structure" or "decode" (module docstring). Never raises for bad image
    content (workers return problems as values so one bad file cannot kill a run);
    `detail` always names the file.
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ImageProblem(MISSING, f"{path}: no such file")
    except OSError as e:  # a directory, no permission, ...
        return ImageProblem(MISSING, f"{path}: cannot read ({e})")
    if not data:
        return ImageProblem(EMPTY, f"{path}: file is empty")
    image_format = sniff_format(data)
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) on huge pixel counts; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if image_format is None:
                return ImageProblem(UNSUPPORTED, f"{path}: {im.format or 'unknown'} "
                                                 "(only JPEG and PNG are stored)")
            width, height = im.size
            if max(width, height) > max_side:
                return ImageProblem(TOO_LARGE, f"{path}: {width}x{height} px, larger than "
                                               f"{max_side} px a side")
            mode = im.mode
            problem = structure_problem(data, image_format) if check == "structure" \
                else DECODE_NEEDED
            if problem is None:
                return _loaded(data, image_format, im, path)
            if problem != DECODE_NEEDED:
                return ImageProblem(CORRUPT, f"{path}: {problem}")
            if image_format == "jpeg":
                # Decode at 1/8 scale in the DCT domain: the whole entropy-coded stream is
                # still read (truncated or damaged data raises as in a full decode), the
                # inverse DCT and colour conversion of the full image are skipped.
                im.draft(None, (max(1, width // 8), max(1, height // 8)))
            im.load()  # truncated/corrupt data raises here
    except Image.DecompressionBombError as e:
        return ImageProblem(TOO_LARGE, f"{path}: {e}")
    except (OSError, SyntaxError, ValueError) as e:
        if image_format is None:
            return ImageProblem(UNSUPPORTED, f"{path}: not a JPEG or PNG file ({e})")
        return ImageProblem(CORRUPT, f"{path}: {e}")
    return _loaded(data, image_format, im, path, mode)


def _loaded(data, image_format, im, path, mode=None) -> LoadedImage | ImageProblem:
    width, height = im.size
    if width < 1 or height < 1:
        return ImageProblem(CORRUPT, f"{path}: zero size {width}x{height}")
    return LoadedImage(encoded=data, image_format=image_format, height=height,
                       width=width, mode=mode or im.mode, orientation=exif_orientation(im))


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 when absent or invalid)."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except (TypeError, ValueError, OSError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1


def upright(image: LoadedImage) -> LoadedImage:
    """Applies the EXIF orientation to the pixels and re-encodes (same format).

    TensorFlow's decoders ignore EXIF, so a record must hold the pixels in the frame its
    boxes describe; labelling tools show (and label) the rotated frame. JPEG is
    re-encoded at quality 95; the orientation tag is dropped by the transpose.
    """
    if image.orientation == 1:
        return image
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(image.encoded)))
    buf = io.BytesIO()
    if image.image_format == "jpeg":
        im.save(buf, format="JPEG", quality=95)
    else:
        im.save(buf, format="PNG")
    return dataclasses.replace(image, encoded=buf.getvalue(), width=im.size[0],
                               height=im.size[1], orientation=1)


def resolve_inside(root: str, relative: str) -> str | None:
    """Joins `relative` to `root`; None if the *name* escapes `root` (`../`, absolute).

    Only the name is checked, not where a symlink points: an image folder made of links
    to files elsewhere is a common layout.
    """
    root_abs = os.path.abspath(root)
    path = os.path.normpath(os.path.join(root_abs, relative))
    if os.path.isabs(relative) or os.path.commonpath([root_abs, path]) != root_abs:
        return None
    return path
