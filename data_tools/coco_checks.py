"""Checks of a COCO instances json's entries before pycocotools indexes them.

pycocotools trusts its input: a malformed entry raises an untyped error deep inside
the conversion, duplicate category ids collapse silently (the last name wins) and a
string flag such as `"iscrowd": "0"` is truthy. Here every entry is checked first:
file-level defects (the `categories` list, a non-list `annotations`) are one error
naming the file and key; a bad image or annotation entry is a counted skip naming it.
"""

from __future__ import annotations

import collections
import numbers

from scdnn_tf.data.tfrecord_writer import ConversionSummary

MALFORMED_IMAGE = "malformed image entry"
MALFORMED_ANNOTATION = "malformed annotation entry"


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_id(v) -> bool:
    return (isinstance(v, numbers.Integral) and not isinstance(v, bool)) or isinstance(v, str)


def parse_flag(value) -> int | None:
    """A 0/1 flag: bool, or the integers 0 and 1; None for anything else (e.g. "0")."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return int(value)
    return None


def bbox_problem(bbox) -> str | None:
    """Why `bbox` is not `[x, y, w, h]` of 4 numbers (None if it is; NaN/inf pass here
    and are counted by the box checks under their own reason)."""
    if bbox is None:
        return "bbox missing or null"
    if not isinstance(bbox, (list, tuple)):
        return f"bbox is not a list ({bbox!r})"
    if len(bbox) != 4:
        return f"bbox has {len(bbox)} numbers, not 4"
    if not all(_is_number(v) for v in bbox):
        return f"bbox has a non-numeric value {list(bbox)!r}"
    return None


def check_categories(categories: list, path: str) -> list[dict]:
    """Returns the category entries; ValueError naming the file for any defect.

    Each must be an object with an integer `id` and a non-empty string `name`; ids and
    names must be unique (pycocotools keeps only the last of duplicated ids, and
    duplicated names would make two classes indistinguishable).
    """
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or not (isinstance(c.get("id"), numbers.Integral)
                                           and not isinstance(c.get("id"), bool)):
            raise ValueError(f"{path}: categories[{i}] has no integer 'id' ({c!r})")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip() or "\n" in name:
            raise ValueError(f"{path}: category id {c['id']} (categories[{i}]) has no valid "
                             f"'name' ({name!r})")
    for key in ("id", "name"):
        counts = collections.Counter(c[key] for c in categories)
        dup = sorted((v for v, n in counts.items() if n > 1), key=str)
        if dup:
            detail = "; ".join(f"{key} {v!r}: ids {[c['id'] for c in categories if c[key] == v]}"
                               f" names {[c['name'] for c in categories if c[key] == v]}"
                               for v in dup)
            raise ValueError(f"{path}: duplicate category {key}s ({detail}); refused")
    return categories


def _image_problem(img) -> str | None:
    if not isinstance(img, dict):
        return f"not an object ({img!r})"
    if not _is_id(img.get("id")):
        return f"no valid 'id' ({img.get('id')!r})"
    if not isinstance(img.get("file_name"), str) or not img["file_name"]:
        return "no 'file_name'"
    for k in ("height", "width"):
        if k in img and not (_is_number(img[k]) and img[k] > 0):
            return f"'{k}' is not a positive number ({img[k]!r})"
    return None


def _annotation_problem(ann) -> str | None:
    if not isinstance(ann, dict):
        return f"not an object ({ann!r})"
    for k in ("image_id", "category_id"):
        if not _is_id(ann.get(k)):
            return f"no valid '{k}' ({ann.get(k)!r})"
    problem = bbox_problem(ann.get("bbox"))
    if problem:
        return problem
    if "iscrowd" in ann and parse_flag(ann["iscrowd"]) is None:
        return f"'iscrowd' is not 0/1 or a boolean ({ann['iscrowd']!r})"
    return None


def clean_dataset(data: dict, path: str, summary: ConversionSummary) -> dict:
    """A copy of the instances dict holding only well-formed entries (others counted)."""
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: 'annotations' must be a list, got "
                         f"{type(annotations).__name__} ({annotations!r:.40})")
    categories = check_categories(data["categories"], path)
    images = []
    for i, img in enumerate(data["images"]):
        problem = _image_problem(img)
        if problem:
            name = img.get("file_name") if isinstance(img, dict) else None
            summary.skip(MALFORMED_IMAGE, f"{path} images[{i}] ({name}): {problem}")
        else:
            images.append(img)
    anns = []
    for i, ann in enumerate(annotations):
        problem = _annotation_problem(ann)
        if problem:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            summary.skip(MALFORMED_ANNOTATION, f"{path} annotations[{i}] (id {ann_id}): "
                                               f"{problem}", annotations=1)
        else:
            anns.append(ann)
    return {**data, "images": images, "annotations": anns, "categories": categories}
