r"""PASCAL VOC (VOCdevkit layout) -> sharded TFRecords (one Example per image).

    python -m data_tools.voc_to_tfrecord --voc_root=VOCdevkit --year=2007 \
        --split=trainval --output_prefix=out/voc07_trainval --num_shards=8

Reads `VOC<year>/ImageSets/Main/<split>.txt`, `Annotations/<id>.xml` and
`JPEGImages/<id>.jpg`. The 20 classes in the conventional order (`VOC_CLASSES`) make
the label map. "Difficult" objects are kept with `image/object/difficult` = 1 (the
pipeline gives a class present only as difficult a label weight of 0); pass
`--include_difficult=false` to leave them out.

VOC pixel coordinates are 1-based and inclusive: a box `xmin..xmax` covers the
continuous span `[xmin - 1, xmax]`, so normalized `xmin = (xmin - 1) / width`,
`xmax = xmax / width` (same for y).

The XML is parsed with defusedxml and any DTD (hence any entity declaration) is refused,
so an entity-expansion bomb is rejected with a clear message instead of expanded.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import defusedxml
import defusedxml.ElementTree as defused_et
import numpy as np
from absl import flags

from data_tools import convert_common, image_checks
from scdnn_tf.utils import cli  # noqa: I001  (imports no TensorFlow: a conversion never needs it)
from scdnn_tf.data.tfrecord_writer import ConversionSummary

FLAGS = flags.FLAGS

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")

MALFORMED_XML = "malformed annotation XML"
UNSAFE_XML = "annotation XML with a DTD/entity declarations (refused)"
MISSING_XML = "missing annotation XML"
UNKNOWN_CLASS = "unknown class name"
DIFFICULT_LEFT_OUT = "difficult object left out"
NO_SIZE = "annotation without a <size> (the image file's size used)"


class UnsafeXMLError(ValueError):
    """The document declares a DTD or entities (possible entity-expansion bomb)."""


def parse_xml_safely(data: bytes, name: str) -> ET.Element:
    """Parses XML with defusedxml, refusing DTDs and entity declarations.

    Raises:
      UnsafeXMLError: a DOCTYPE or an entity declaration is present (refused before any
        entity could be expanded).
      ValueError: not well-formed XML; the message names `name`, line and column.
    """
    try:
        return defused_et.fromstring(data, forbid_dtd=True)
    except (defusedxml.DTDForbidden, defusedxml.EntitiesForbidden,
            defusedxml.ExternalReferenceForbidden):
        raise UnsafeXMLError(f"{name}: XML declares a DTD or entities; refused "
                             "(VOC annotations need neither)") from None
    except ET.ParseError as e:
        raise ValueError(f"{name}: malformed XML ({e})") from None


def _text(node: ET.Element, path: str, name: str) -> str:
    found = node.find(path)
    if found is None or found.text is None:
        raise ValueError(f"{name}: missing <{path}>")
    return found.text.strip()


def parse_annotation(root: ET.Element, name: str) -> dict:
    """Extracts size and objects from a VOC annotation tree.

    Returns:
      dict with `height`, `width` (ints, pixels; None when `<size>` is missing or zero:
      the caller then uses the image file's size) and `objects`: a list of dicts with
      `name`, `difficult` (0/1) and `box` = 1-based inclusive pixel
      `(xmin, ymin, xmax, ymax)` floats.
    """
    try:
        size = (None, None)
        if root.find("size/height") is not None or root.find("size/width") is not None:
            size = (int(float(_text(root, "size/height", name))),
                    int(float(_text(root, "size/width", name))))
        if size[0] is not None and min(size) <= 0:
            if min(size) < 0:
                raise ValueError(f"negative <size> {size[1]}x{size[0]}")
            size = (None, None)
        objects = []
        for obj in root.findall("object"):
            difficult = obj.find("difficult")
            objects.append({
                "name": _text(obj, "name", name),
                "difficult": int(difficult is not None and (difficult.text or "0").strip()
                                 not in ("", "0")),
                "box": tuple(float(_text(obj, f"bndbox/{k}", name))
                             for k in ("xmin", "ymin", "xmax", "ymax")),
            })
    except ValueError as e:
        raise ValueError(f"{name}: bad annotation content ({e})") from None
    return {"height": size[0], "width": size[1], "objects": objects}


def _read_ids(path: str) -> list[str]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"VOC image set list not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def _task(voc_dir: str, image_id: str, include_difficult: bool,
          summary: ConversionSummary) -> convert_common.ImageTask | None:
    xml_path = os.path.join(voc_dir, "Annotations", f"{image_id}.xml")
    try:
        with open(xml_path, "rb") as f:
            data = f.read()
    except OSError as e:
        summary.skip(MISSING_XML, f"{xml_path} ({e.strerror})", annotations=1)
        return None
    try:
        ann = parse_annotation(parse_xml_safely(data, xml_path), xml_path)
    except UnsafeXMLError as e:
        summary.skip(UNSAFE_XML, str(e), annotations=1)
        return None
    except ValueError as e:
        summary.skip(MALFORMED_XML, str(e), annotations=1)
        return None
    if ann["height"] is None:
        summary.note(NO_SIZE, xml_path)
    boxes, classes, difficult, objects = [], [], [], []
    for k, obj in enumerate(ann["objects"]):
        label = f"{xml_path} object {k} ({obj['name']})"
        if obj["name"] not in VOC_CLASSES:
            summary.skip(UNKNOWN_CLASS, label, annotations=1)
            continue
        if obj["difficult"] and not include_difficult:
            summary.note(DIFFICULT_LEFT_OUT, label, annotations=1)
            continue
        xmin, ymin, xmax, ymax = obj["box"]
        boxes.append([ymin - 1.0, xmin - 1.0, ymax, xmax])  # 1-based inclusive -> spans
        classes.append(VOC_CLASSES.index(obj["name"]))
        difficult.append(obj["difficult"])
        objects.append(label)
    filename = f"{image_id}.jpg"
    return convert_common.ImageTask(
        path=os.path.join(voc_dir, "JPEGImages", filename), filename=filename,
        source_id=image_id, boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
        box_units="pixels", classes=classes,
        class_texts=[VOC_CLASSES[c] for c in classes], difficult=difficult,
        object_names=objects,
        expected_hw=None if ann["height"] is None else (ann["height"], ann["width"]))


def convert(voc_root: str, year: str, split: str, output_prefix: str, num_shards: int,
            include_difficult: bool = True, num_workers: int = 1, strict: bool = False,
            max_image_side: int = image_checks.DEFAULT_MAX_SIDE,
            image_check: str = "structure",
            max_skip_fraction: float = convert_common.DEFAULT_MAX_SKIP_FRACTION
            ) -> ConversionSummary:
    """Converts one VOC split; returns the summary (`summary.paths` = shard paths)."""
    voc_dir = os.path.join(voc_root, f"VOC{year}")
    if not os.path.isdir(voc_dir):
        raise FileNotFoundError(f"{voc_dir} not found (expected VOCdevkit/VOC<year>)")
    ids = _read_ids(os.path.join(voc_dir, "ImageSets", "Main", f"{split}.txt"))
    summary = ConversionSummary(strict=strict)
    convert_common.check_label_map_beside(output_prefix, list(VOC_CLASSES))
    tasks = (t for t in (_task(voc_dir, i, include_difficult, summary) for i in ids) if t)
    summary.paths = convert_common.run_conversion(
        convert_common.skip_duplicates(tasks, summary), output_prefix, num_shards, summary,
        num_workers=num_workers, max_image_side=max_image_side,
        image_check=image_check, total=len(ids), desc=f"voc{year} {split}",
        max_skip_fraction=max_skip_fraction)
    convert_common.write_label_map_beside(output_prefix, list(VOC_CLASSES))
    return summary


def define_flags() -> None:
    flags.DEFINE_string("voc_root", None, "The VOCdevkit folder (holding VOC<year>/).")
    flags.DEFINE_string("year", "2007", "Dataset year: the VOC<year> subfolder.")
    flags.DEFINE_string("split", "trainval", "ImageSets/Main/<split>.txt to convert.")
    flags.DEFINE_boolean("include_difficult", True,
                         "Keep difficult objects (flagged difficult=1).")
    convert_common.define_common_flags()
    flags.mark_flag_as_required("voc_root")


def main(argv):
    del argv
    convert_common.run_main(convert, FLAGS.voc_root, FLAGS.year, FLAGS.split,
                            include_difficult=FLAGS.include_difficult,
                            **convert_common.common_kwargs(FLAGS))


def run() -> None:
    """Console-script entry point (`scdnn-voc-to-tfrecord`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
