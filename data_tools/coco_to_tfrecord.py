r"""COCO instances json + image folder -> sharded TFRecords (one Example per image).

    python -m data_tools.coco_to_tfrecord \
        --annotations=annotations/instances_train2017.json --image_dir=train2017 \
        --output_prefix=out/coco_train --num_shards=32 --num_workers=4

Class index = position of the category id among the sorted category ids of the json;
`label_map.txt` (names) and `label_map.source_ids.txt` (the COCO category id of each
line) are written beside the shards. Records from TF Model Garden's
`create_coco_tf_record` carry raw COCO ids (1..90): remap them with
`read_source_ids(".../label_map.source_ids.txt")` -> `{coco_id: index}`.

Images without annotations are kept (no boxes, no labels). Crowd boxes are left out
unless `--include_crowd` (counted). Boxes: COCO `[x, y, w, h]` pixels -> normalized
`[ymin, xmin, ymax, xmax]` by the entry's declared `width`/`height` (the frame they were
drawn in; see `convert_common` for rescaled and EXIF-rotated files); partly outside ->
clipped and counted; wholly outside, zero area or NaN -> skipped and counted. Malformed
entries are counted skips (`coco_checks`); the same file under two ids is written once.
"""

from __future__ import annotations

from scdnn_tf.utils import cli  # noqa: I001  (imports no TensorFlow: a conversion never needs it)

import collections
import contextlib
import io
import os

import numpy as np
from absl import flags
from pycocotools.coco import COCO

from data_tools import coco_checks, convert_common, image_checks
from scdnn_tf.data.tfrecord_writer import ConversionSummary
from scdnn_tf.utils import files

FLAGS = flags.FLAGS

SOURCE_IDS_FILE = "label_map.source_ids.txt"
DUPLICATE_ID = "duplicate image id"
ESCAPING_NAME = "file name outside the image dir"
UNKNOWN_CATEGORY = "unknown category id"
MISSING_IMAGE_ID = "annotation for a missing image id"
CROWD_LEFT_OUT = "crowd box left out"


def load_coco(path: str, summary: ConversionSummary | None = None) -> COCO:
    """Loads an instances json into a pycocotools `COCO`; errors name the file.

    Malformed image/annotation entries are left out and counted in `summary` (see
    `coco_checks`); category defects and a non-list `annotations` raise ValueError.
    """
    with files.flag_errors("annotations", path):
        data = files.read_json(path)
        if not isinstance(data, dict) or not all(
                isinstance(data.get(k), list) for k in ("images", "categories")):
            raise ValueError(f"{path}: not a COCO instances file (needs 'images' and "
                             "'categories' lists)")
    data = coco_checks.clean_dataset(data, path, summary or ConversionSummary())
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def read_source_ids(path: str) -> dict[int, int]:
    """Reads `label_map.source_ids.txt` -> `{source (COCO) category id: class index}`."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    try:
        return {int(v): i for i, v in enumerate(lines)}
    except ValueError as e:
        raise ValueError(f"{path}: expected one integer category id per line ({e})") from None


def _images_with_unique_ids(coco: COCO, summary: ConversionSummary) -> list[dict]:
    """The json's image entries, minus every entry whose id occurs more than once.

    pycocotools silently keeps the last of duplicated ids; annotations of such an id
    cannot be attributed to one file, so all its entries are skipped.
    """
    by_id = collections.defaultdict(list)
    for img in coco.dataset["images"]:
        by_id[img["id"]].append(img)
    kept = []
    for img_id, entries in by_id.items():
        if len(entries) > 1:
            names = ", ".join(str(e.get("file_name")) for e in entries)
            summary.skip(DUPLICATE_ID, f"id {img_id} ({names})",
                         annotations=len(coco.imgToAnns.get(img_id, [])))
        else:
            kept.append(entries[0])
    return kept


def _count_orphans(coco: COCO, annotations_path: str, summary: ConversionSummary) -> None:
    for ann in coco.dataset["annotations"]:
        if ann.get("image_id") not in coco.imgs:
            summary.skip(MISSING_IMAGE_ID, f"{annotations_path} annotation {ann.get('id')} "
                                           f"(image id {ann.get('image_id')})", annotations=1)


def _tasks(coco: COCO, images: list[dict], image_dir: str, include_crowd: bool,
           index_of: dict[int, int], names: list[str], summary: ConversionSummary):
    for img in images:
        file_name = str(img.get("file_name", ""))
        path = image_checks.resolve_inside(image_dir, file_name)
        if path is None:
            summary.skip(ESCAPING_NAME, f"image id {img['id']}: {file_name!r}",
                         annotations=len(coco.imgToAnns.get(img["id"], [])))
            continue
        boxes, classes, crowd, objects = [], [], [], []
        for ann in coco.imgToAnns.get(img["id"], []):
            label = f"{file_name} annotation {ann.get('id')}"
            if ann.get("category_id") not in index_of:
                summary.skip(UNKNOWN_CATEGORY, f"{label} (category {ann.get('category_id')})",
                             annotations=1)
                continue
            is_crowd = coco_checks.parse_flag(ann.get("iscrowd", 0))
            if is_crowd and not include_crowd:
                summary.note(CROWD_LEFT_OUT, label, annotations=1)
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append([y, x, y + h, x + w])
            classes.append(index_of[ann["category_id"]])
            crowd.append(is_crowd)
            objects.append(label)
        hw = (img["height"], img["width"]) if "height" in img and "width" in img else None
        yield convert_common.ImageTask(
            path=path, filename=file_name, source_id=str(img["id"]),
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4), box_units="pixels",
            classes=classes, class_texts=[names[c] for c in classes], is_crowd=crowd,
            object_names=objects, expected_hw=hw)


def convert(annotations: str, image_dir: str, output_prefix: str, num_shards: int,
            include_crowd: bool = False, num_workers: int = 1, strict: bool = False,
            max_image_side: int = image_checks.DEFAULT_MAX_SIDE,
            image_check: str = "structure",
            max_skip_fraction: float = convert_common.DEFAULT_MAX_SKIP_FRACTION
            ) -> ConversionSummary:
    """Converts one COCO split; returns the summary (`summary.paths` = shard paths)."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image dir not found: {image_dir}")
    summary = ConversionSummary(strict=strict)
    coco = load_coco(annotations, summary)
    cat_ids = sorted(coco.cats)
    index_of = {cid: i for i, cid in enumerate(cat_ids)}
    names = [str(coco.cats[c]["name"]) for c in cat_ids]
    convert_common.check_label_map_beside(output_prefix, names)
    convert_common.check_label_map_beside(output_prefix, [str(c) for c in cat_ids],
                                          SOURCE_IDS_FILE)
    images = _images_with_unique_ids(coco, summary)
    _count_orphans(coco, annotations, summary)
    tasks = _tasks(coco, images, image_dir, include_crowd, index_of, names, summary)
    summary.paths = convert_common.run_conversion(
        convert_common.skip_duplicates(tasks, summary), output_prefix, num_shards, summary,
        num_workers=num_workers, max_image_side=max_image_side,
        image_check=image_check, total=len(images), desc="coco",
        max_skip_fraction=max_skip_fraction)
    convert_common.write_label_map_beside(output_prefix, names)
    convert_common.write_label_map_beside(output_prefix, [str(c) for c in cat_ids],
                                          SOURCE_IDS_FILE)
    return summary


def define_flags() -> None:
    flags.DEFINE_string("annotations", None, "COCO instances json.")
    flags.DEFINE_string("image_dir", None, "Folder holding the json's file_name entries.")
    flags.DEFINE_boolean("include_crowd", False, "Keep iscrowd=1 boxes (flagged is_crowd).")
    convert_common.define_common_flags()
    flags.mark_flags_as_required(["annotations", "image_dir"])


def main(argv):
    del argv
    convert_common.run_main(convert, FLAGS.annotations, FLAGS.image_dir,
                            include_crowd=FLAGS.include_crowd,
                            **convert_common.common_kwargs(FLAGS))


def run() -> None:
    """Console-script entry point (`scdnn-coco-to-tfrecord`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
