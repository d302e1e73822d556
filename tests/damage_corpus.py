"""Damaged JPEG and PNG files for testing image checks against TensorFlow's decoders.

Each damage is a `(damage class, bytes)` pair made from an intact file: truncations,
byte flips and random bytes inside each header segment (JPEG: DQT, DHT, SOF, SOS, APPn;
PNG: IHDR, IDAT, IEND), in the coded data, zero-filled ranges, garbage after the end,
missing end markers. Deterministic (seeded); the segment layout is found by a walk written
here, independent of the checks under test.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # JPEG markers without a length field


def _photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: coded data with both long and short Huffman codes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """An EXIF APP1 payload (big-endian TIFF) with an orientation tag and a JPEG thumbnail
    in IFD1: the thumbnail's own SOI ... EOI sits inside the APP1 segment."""
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x0112, 3, 1, 1 << 16)
    ifd1_at = 8 + len(ifd0) + 4
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    ifd1 = struct.pack(">H", 2) + struct.pack(">HHII", 0x0201, 4, 1, thumb_at) + \
        struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail)) + struct.pack(">I", 0)
    tiff = b"MM\0*" + struct.pack(">I", 8) + ifd0 + struct.pack(">I", ifd1_at) + ifd1
    return b"Exif\0\0" + tiff + thumbnail


def jpeg_variants() -> dict[str, bytes]:
    """Intact JPEGs: baseline/progressive, 4:2:0/4:4:4, EXIF thumbnail, restart markers,
    grayscale (sizes not multiples of the MCU, so edge blocks are padded)."""
    im = Image.fromarray(_photo_like(37, 53, 0))

    def save(image, **kw):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85, **kw)
        return buf.getvalue()

    thumb = save(im.resize((16, 12)))
    return {
        "baseline_420": save(im),
        "baseline_444": save(im, subsampling=0),
        "progressive_420": save(im, progressive=True),
        "progressive_444": save(im, progressive=True, subsampling=0),
        "exif_thumbnail": save(im, exif=_exif_with_thumbnail(thumb)),
        "restart_markers": save(im, restart_marker_blocks=2),
        "progressive_restarts": save(im, progressive=True, restart_marker_blocks=3),
        "grayscale": save(im.convert("L")),
    }


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """(segments, scans): segments as (marker, start of the 0xFF, end); scans as the
    (start, end) byte range of each scan's entropy-coded data."""
    segments, scans, pos = [], [], 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segments.append((marker, pos, pos + 2 + length))
        pos += 2 + length
        if marker == 0xDA:
            start = pos
            while not (data[pos] == 0xFF and data[pos + 1] not in (0, *range(0xD0, 0xD8))):
                pos += 1
            scans.append((start, pos))
    return segments, scans


def _flips(name, data, start, end, rng, count):
    """`count` single-byte damages in [start, end): xor 0xFF, then random values."""
    out = []
    if end <= start:
        return out
    for i, at in enumerate(sorted(set(rng.integers(start, end, count).tolist()))):
        b = bytearray(data)
        b[at] = b[at] ^ 0xFF if i % 2 == 0 else int(rng.integers(0, 256))
        if bytes(b) != data:
            out.append((name, bytes(b)))
    return out


def _truncations(prefix, data, start, end, count):
    return [(prefix, data[:n]) for n in sorted(set(np.linspace(start, end, count, dtype=int)))]


def _zero_fills(name, data, start, end, rng, count, size):
    out = []
    for at in rng.integers(start, max(start + 1, end - size), count):
        b = bytearray(data)
        b[at:at + size] = bytes(min(size, len(data) - at))
        out.append((name, bytes(b)))
    return out


def damaged_jpegs(data: bytes, seed: int = 0, per_class: int = 6) -> list[tuple[str, bytes]]:
    """Damaged copies of one intact JPEG, labelled by damage class."""
    rng = np.random.default_rng(seed)
    segments, scans = jpeg_segments(data)
    first_scan = scans[0][0]
    out = _truncations("truncated in header", data, 1, first_scan - 1, per_class)
    for start, end in scans:
        out += _truncations("truncated mid-scan", data, start, end, max(2, per_class // 2))
    out += [("truncated just before EOI", data[:-1]), ("missing EOI", data[:-2]),
            ("EOI replaced by garbage", data[:-2] + b"\x12\x34")]
    names = {0xDB: "DQT", 0xC4: "DHT", 0xC0: "SOF", 0xC2: "SOF", 0xC1: "SOF", 0xDA: "SOS",
             0xDD: "DRI", 0xE0: "APP0", 0xE1: "APP1 (EXIF)"}
    for marker, start, end in segments:
        name = names.get(marker, f"marker {marker:02X}")
        # Byte 1 is the marker code, 2-3 the length, then the payload.
        out += _flips(f"byte damage in {name} header", data, start + 1, start + 4, rng, 2)
        out += _flips(f"byte damage in {name} payload", data, start + 4, end, rng, per_class)
    for start, end in scans:
        out += _flips("byte damage in coded data", data, start, end, rng, per_class)
        out += _zero_fills("zero-filled range in coded data", data, start, end, rng, 2, 8)
    out += _zero_fills("zero-filled range in header", data, 2, first_scan, rng, per_class, 4)
    out += [("garbage after EOI", data + bytes(rng.integers(0, 256, 64, dtype=np.uint8))),
            ("second image after EOI", data + data)]
    return out


def png_variants() -> dict[str, bytes]:
    """Intact PNGs: RGB, RGBA, grayscale, palette, 16-bit, interlaced."""
    rgb = Image.fromarray(_photo_like(23, 31, 1))

    def save(image, **kw):
        buf = io.BytesIO()
        image.save(buf, format="PNG", **kw)
        return buf.getvalue()

    return {
        "rgb": save(rgb), "rgba": save(rgb.convert("RGBA")), "gray": save(rgb.convert("L")),
        "palette": save(rgb.convert("P")), "gray16": save(rgb.convert("I;16")),
        "interlaced": save(rgb, optimize=False, interlace=1),
    }


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start of the length field, end after the CRC) of each chunk."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, pos, pos + 12 + length))
        pos += 12 + length
    return out


def _with_crc(data: bytes, start: int, end: int) -> bytes:
    """`data` with the CRC of the chunk at [start, end) recomputed (damage behind a valid CRC)."""
    crc = zlib.crc32(data[start + 4:end - 4]) & 0xFFFFFFFF
    return data[:end - 4] + struct.pack(">I", crc) + data[end:]


def damaged_pngs(data: bytes, seed: int = 0, per_class: int = 6) -> list[tuple[str, bytes]]:
    """Damaged copies of one intact PNG, labelled by damage class."""
    rng = np.random.default_rng(seed)
    chunks = png_chunks(data)
    out = _truncations("truncated", data, 1, len(data) - 1, 3 * per_class)
    for kind, start, end in chunks:
        name = kind.decode("latin-1")
        out += _flips(f"byte damage in {name}", data, start, end, rng, per_class)
        for label, damaged in _flips(f"byte damage in {name} (CRC fixed)", data, start + 8,
                                     end - 4, rng, per_class):
            out.append((label, _with_crc(damaged, start, end)))
    idat = [c for c in chunks if c[0] == b"IDAT"]
    kind, start, end = idat[0]
    for label, damaged in _zero_fills("zero-filled IDAT range (CRC fixed)", data, start + 8,
                                      end - 4, rng, per_class, 8):
        out.append((label, _with_crc(damaged, start, end)))
    iend = chunks[-1][1]
    out += [("missing IEND", data[:iend]),
            ("garbage after IEND", data + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))]
    return out
