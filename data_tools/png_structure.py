"""Structural check of a PNG file: what libpng (TensorFlow's decoder) treats as fatal.

libpng checks the CRC of every chunk it reads and fails on a bad one, so chunk framing
and CRCs (`zlib.crc32`) are checked, IHDR's fields, PLTE for palette images, the chunk
order (IHDR first, IDAT chunks together, IEND present). The compressed image data is
inflated (zlib, without unfiltering or colour conversion): a damaged deflate stream
behind a correct CRC is fatal for libpng, and only inflating shows it; the inflated data
must cover the image and every row's filter type be 0..4.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> (channels, allowed bit depths)
COLOR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)),
               4: (2, (8, 16)), 6: (4, (8, 16))}
MAX_SIDE = 1_000_000  # libpng's default user limit on width and height
KNOWN_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
# Adam7 passes: (x0, y0, dx, dy).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
         (1, 0, 2, 2), (0, 1, 1, 2))


def ihdr_problem(body: bytes) -> str | None:
    """Why libpng rejects an IHDR chunk body, or None."""
    if len(body) != 13:
        return f"IHDR of {len(body)} bytes (13 expected)"
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", body)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        return f"bad image size {width}x{height}"
    if color not in COLOR_TYPES or depth not in COLOR_TYPES[color][1]:
        return f"bad colour type {color} / bit depth {depth}"
    if compression or filtering or interlace > 1:
        return "bad compression, filter or interlace method"
    return None


def row_layout(width: int, height: int, depth: int, color: int, interlace: int):
    """[(rows, bytes per row without the filter byte)] of each (pass of the) image."""
    bits = COLOR_TYPES[color][0] * depth
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    layout = []
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            layout.append((h, -(-w * bits // 8)))
    return layout


def image_data_problem(raw: bytes, layout) -> str | None:
    """Why libpng rejects inflated image data `raw` laid out as `layout`, or None.

    Data past the image's size is only a warning for libpng ("extra compressed data").
    """
    expected = sum(h * (1 + stride) for h, stride in layout)
    if len(raw) < expected:
        return f"image data inflates to {len(raw)} bytes, {expected} expected"
    at = 0
    for h, stride in layout:
        filters = raw[at: at + h * (1 + stride): 1 + stride]
        if max(filters) > 4:
            return f"bad row filter type {max(filters)}"
        at += h * (1 + stride)
    return None


def inflate_image_data(stream: bytes, expected: int) -> tuple[bytes, str | None]:
    """(the first `expected` + 1 inflated bytes at most, fatal problem or None).

    libpng inflates into each row until the row is full, so zlib reports an error in the
    data (or the checksum) behind the last row's bytes as well, which is fatal; only
    data past the image's size is never inflated (a warning). So an error counts unless
    zlib produced more than `expected` bytes before it. The stream is fed in blocks; the
    block where zlib fails is fed again byte by byte (from a copy of the inflater) to
    find how much it produced first.
    """
    inflater, out, block = zlib.decompressobj(), [], 1 << 16
    produced = 0
    for start in range(0, len(stream), block):
        piece, saved = stream[start:start + block], inflater.copy()
        try:
            # Capped one byte over the expected size: a bomb stops there.
            out.append(inflater.decompress(piece, expected + 1 - produced))
        except zlib.error as e:
            out.append(_bytes_before_error(saved, piece, expected + 1 - produced))
            produced += len(out[-1])
            return b"".join(out), None if produced > expected else f"damaged image data ({e})"
        produced += len(out[-1])
        if produced > expected or inflater.eof:
            break
    raw = b"".join(out)
    if len(raw) == expected and not inflater.eof:
        # libpng reads on for the stream end and finds no more IDAT data.
        return raw, "image data ends early (deflate stream incomplete)"
    return raw, None


def _bytes_before_error(inflater, piece: bytes, cap: int) -> bytes:
    """What `inflater` yields from `piece` (at most `cap` bytes) before zlib fails."""
    out = []
    for i in range(len(piece)):
        try:
            out.append(inflater.decompress(piece[i:i + 1], cap))
        except zlib.error:
            break
        cap -= len(out[-1])
        if cap <= 0:
            break
    return b"".join(out)


def _chunks(data: bytes):
    """Yields (type, body) up to IEND; raises ValueError naming the framing problem."""
    pos, n = len(SIGNATURE), len(data)
    while True:
        if pos + 12 > n:
            raise ValueError(f"truncated at byte {pos} (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if length >= 1 << 31 or end > n:
            raise ValueError(f"chunk at byte {pos} runs past the end (truncated?)")
        if not kind.isalpha():
            raise ValueError(f"bad chunk type {kind!r} at byte {pos}")
        if zlib.crc32(data[pos + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise ValueError(f"CRC mismatch in {kind.decode()} chunk at byte {pos}")
        yield kind, data[pos + 8:end - 4]
        if kind == b"IEND":
            return
        pos = end


def png_problem(data: bytes) -> str | None:
    """Why TensorFlow's PNG decoder would fail on `data`, or None if it is sound."""
    if not data.startswith(SIGNATURE):
        return "no PNG signature"
    header, palette, idat, idat_done = None, None, [], False
    try:
        for kind, body in _chunks(data):
            if header is None and kind != b"IHDR":
                return f"first chunk is {kind.decode()}, not IHDR"
            if kind == b"IHDR":
                if header is not None:
                    return "two IHDR chunks"
                problem = ihdr_problem(body)
                if problem:
                    return problem
                header = struct.unpack(">IIBBBBB", body)
            elif kind == b"PLTE":
                palette = body
            elif kind == b"IDAT":
                if idat_done:
                    return "IDAT chunks are not consecutive"
                idat.append(body)
            elif kind[0:1].isupper() and kind not in KNOWN_CRITICAL:
                return f"unknown critical chunk {kind.decode()}"
            idat_done = idat_done or (bool(idat) and kind != b"IDAT")
    except ValueError as e:
        return str(e)
    width, height, depth, color, _, _, interlace = header
    if color == 3 and (palette is None or not palette or len(palette) % 3
                       or len(palette) // 3 > 1 << depth):
        return "palette image without a valid PLTE chunk"
    if not idat:
        return "no IDAT chunk"
    layout = row_layout(width, height, depth, color, interlace)
    raw, problem = inflate_image_data(b"".join(idat), sum(h * (1 + w) for h, w in layout))
    return problem or image_data_problem(raw, layout)
