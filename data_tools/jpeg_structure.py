"""Structural check of a JPEG file: what libjpeg (TensorFlow's decoder) treats as fatal.

No coefficient is decoded. The marker segments are walked from SOI the way libjpeg's
marker reader walks them (segment lengths inside the file, stray bytes between segments
skipped, entropy-coded data skipped up to the next marker: in it 0xFF is followed by 0x00,
a restart marker RSTn or a real marker), and the fields libjpeg raises an error for are
validated: SOF (precision 8, sides 1..65500, 1, 3 or 4 components, sampling factors
1..4), DQT and DHT (table ids, classes, counts, Huffman code space, DC symbols <= 15),
SOS (components declared in SOF, Huffman and quantization tables defined, blocks per
MCU, progressive parameters), then an EOI that ends the data (reading past the end of
the file is an error for TensorFlow's decoder, so a missing EOI is fatal; bytes after EOI
are never read). An EXIF thumbnail's own SOI..EOI is inside APP1 and skipped with it.

Damage inside the entropy-coded data that leaves the marker structure intact (a flipped
bit in a Huffman code) is only a warning for libjpeg: the image decodes with a damaged
block, so the check lets it through, as training would.
"""

from __future__ import annotations

import re

SOI, EOI, SOS, DHT, DQT, DRI, DAC, DNL, TEM, COM = (
    0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xCC, 0xDC, 0x01, 0xFE)
HUFFMAN_SOF = {0xC0: False, 0xC1: False, 0xC2: True}  # marker -> progressive
# SOF types libjpeg builds may or may not decode (arithmetic, lossless, hierarchical):
# outside this check; the caller decodes such files.
OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
RST = range(0xD0, 0xD8)
MAX_SIDE = 65500  # JPEG_MAX_DIMENSION
MAX_BLOCKS_IN_MCU = 10
# The next marker: 0xFF (fill bytes allowed) then a byte that is not 0x00 (stuffing), RSTn
# or 0xFF. Found with one regex search (scan data skipped at C speed); written with a
# literal first byte, which lets `re` jump between 0xFF bytes (16x faster than `\xff+`).
_MARKER = re.compile(rb"\xff\xff*[^\x00\xd0-\xd7\xff]")


class NotCovered(Exception):
    """The file uses a feature this check does not verify (the caller must decode it)."""


class _State:
    """What the marker reader has seen so far (tables are per slot 0..3)."""

    def __init__(self):
        self.frame = None  # {component id: (h, v, quant table)}, in SOF order
        self.progressive = False
        self.quant = set()
        self.huffman = {}  # (kind, slot) -> (counts, symbols)
        self.latched = set()
        self.scans = 0
        self.multiple_scans = False


def _sof(state: _State, body: bytes, progressive: bool) -> str | None:
    if state.frame is not None:
        return "two SOF markers"
    if len(body) < 6:
        return "bad SOF length"
    precision, height, width, count = body[0], _u16(body, 1), _u16(body, 3), body[5]
    if len(body) != 6 + 3 * count:
        return "bad SOF length"
    if precision != 8:
        return f"unsupported sample precision {precision} (8-bit only)"
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        return f"bad image size {width}x{height}"
    if count not in (1, 3, 4):
        return f"{count} colour components (1, 3 or 4 decode to RGB)"
    frame = {}
    for i in range(count):
        cid, hv, tq = body[6 + 3 * i: 9 + 3 * i]
        h, v = hv >> 4, hv & 15
        if not (1 <= h <= 4 and 1 <= v <= 4):
            return f"bad sampling factors {h}x{v}"
        if cid in frame:
            raise NotCovered("repeated component id")
        frame[cid] = (h, v, tq)
    max_h = max(h for h, _, _ in frame.values())
    max_v = max(v for _, v, _ in frame.values())
    if any(max_h % h or max_v % v for h, v, _ in frame.values()):
        raise NotCovered("fractional sampling factors")
    state.frame, state.progressive = frame, progressive
    return None


def _dqt(state: _State, body: bytes) -> str | None:
    pos = 0
    while pos < len(body):
        precision, slot = body[pos] >> 4, body[pos] & 15
        if slot >= 4:
            return f"bad quantization table id {slot}"
        # libjpeg accepts a short last table (the rest stays 1); the length must match.
        left = len(body) - pos - 1
        pos += 1 + (2 * min(64, left // 2) if precision else min(64, left))
        state.quant.add(slot)
    return None


def huffman_table_problem(counts: bytes, symbols: bytes, dc: bool) -> str | None:
    """Why libjpeg rejects a Huffman table (`counts`: 16 code counts by length), or None.

    Codes are assigned in order; a length must not run out of codes and the all-ones
    code is reserved; DC symbols are bit counts 0..15.
    """
    code = 0
    for length, n in enumerate(counts, start=1):
        code += n
        if n and code >= 1 << length:
            return "bad Huffman table (more codes than fit)"
        code <<= 1
    if dc and any(s > 15 for s in symbols):
        return "bad Huffman table (DC symbol > 15)"
    return None


def _dht(state: _State, body: bytes) -> str | None:
    pos = 0
    while len(body) - pos > 16:
        index, counts = body[pos], body[pos + 1: pos + 17]
        total = sum(counts)
        pos += 17
        if total > 256 or total > len(body) - pos:
            return "bad Huffman table (symbol count)"
        kind, slot = ("ac", index - 0x10) if index & 0x10 else ("dc", index)
        if slot >= 4:
            return f"bad Huffman table id {index:#04x}"
        state.huffman[(kind, slot)] = (bytes(counts), body[pos: pos + total])
        pos += total
    return "bad DHT length" if pos != len(body) else None


def _table_problem(state: _State, kind: str, slot: int) -> str | None:
    if slot < 2 and (kind, slot) not in state.huffman:
        # libjpeg-turbo may fall back to the standard tables here (motion JPEG frames).
        raise NotCovered("a scan uses a Huffman table the file does not define")
    if slot >= 4 or (kind, slot) not in state.huffman:
        return f"Huffman table {kind.upper()} {slot} used but not defined"
    return huffman_table_problem(*state.huffman[(kind, slot)], dc=kind == "dc")


def _sos(state: _State, body: bytes) -> str | None:
    if state.frame is None:
        return "SOS before SOF"
    if state.scans and not state.multiple_scans:
        return "a second scan in a single-scan JPEG"
    count = body[0] if body else 0
    if not 1 <= count <= 4 or len(body) != 4 + 2 * count:
        return "bad SOS length"
    ids = [body[1 + 2 * i] for i in range(count)]
    tables = [body[2 + 2 * i] for i in range(count)]
    ss, se, ah, al = body[-3], body[-2], body[-1] >> 4, body[-1] & 15
    if len(set(ids)) != count or any(c not in state.frame for c in ids):
        return f"SOS names component(s) {ids}, SOF declares {list(state.frame)}"
    if count > 1 and sum(state.frame[c][0] * state.frame[c][1] for c in ids) > MAX_BLOCKS_IN_MCU:
        return "too many blocks per MCU"
    dc_band = ss == 0
    if state.progressive:
        bad = (se != 0) if dc_band else (ss > se or se > 63 or count != 1)
        if bad or (ah != 0 and al != ah - 1) or al > 13:
            return f"bad progressive parameters Ss={ss} Se={se} Ah={ah} Al={al}"
    uses = [("dc", t >> 4) for t in tables] if not state.progressive or (dc_band and ah == 0) \
        else []
    if not state.progressive or not dc_band:
        uses += [("ac", t & 15) for t in tables]
    for kind, slot in uses:
        problem = _table_problem(state, kind, slot)
        if problem:
            return problem
    for c in ids:  # a component's quantization table is fixed at its first scan
        if c not in state.latched:
            if state.frame[c][2] not in state.quant:
                return f"quantization table {state.frame[c][2]} used but not defined"
            state.latched.add(c)
    if state.scans == 0:
        state.multiple_scans = state.progressive or count < len(state.frame)
    state.scans += 1
    return None


def _u16(data: bytes, pos: int) -> int:
    return (data[pos] << 8) | data[pos + 1]


_HANDLERS = {DQT: _dqt, DHT: _dht, SOS: _sos}


def jpeg_problem(data: bytes) -> str | None:
    """Why TensorFlow's JPEG decoder would fail on `data`, or None if its structure is sound.

    Raises:
      NotCovered: arithmetic coding, lossless/hierarchical SOF, repeated component ids or
        fractional sampling (rare; decode the file to check it).
    """
    if data[:2] != b"\xff\xd8":
        return "no SOI marker"
    state, pos, n = _State(), 2, len(data)
    while True:
        found = _MARKER.search(data, pos)
        if found is None:
            return f"no EOI marker (data ends at byte {n} without one: truncated?)"
        marker, at = data[found.end() - 1], found.end() - 1
        if marker == EOI:
            return None if state.scans else "EOI before any scan (no image)"
        if marker == TEM:
            pos = at + 1
            continue
        if marker == SOI:
            return f"second SOI marker at byte {at - 1}"
        if at + 3 > n:
            return f"truncated in the {marker:#04x} marker at byte {at - 1}"
        length = _u16(data, at + 1)
        end = at + 1 + max(length, 2)
        if end > n:
            return f"segment {marker:#04x} at byte {at - 1} runs past the end (truncated?)"
        body = data[at + 3:end] if length >= 2 else b""
        problem = None
        if marker in HUFFMAN_SOF:
            problem = _sof(state, body, HUFFMAN_SOF[marker])
        elif marker in OTHER_SOF or marker == DAC:
            raise NotCovered(f"JPEG process marker {marker:#04x} (arithmetic or lossless)")
        elif marker in _HANDLERS:
            problem = _HANDLERS[marker](state, body) if length >= 2 else "bad length"
        elif marker == DRI:
            problem = None if length == 4 else "bad DRI length"
        elif not (0xE0 <= marker <= 0xEF or marker in (COM, DNL)):
            problem = f"unknown marker {marker:#04x}"
        if problem:
            return f"{problem} (segment at byte {at - 1})"
        pos = end
