"""Data of benchmarks/beyond_paper.py: synthetic scenes per layout with their class groups,
and the fixed split of the real COCO photos converted with the project's converters.

Real split (by collection, fixed): TRAIN = coco_mini (COCO json) + coco128 (YOLO labels),
EVAL = coco_tiny + tiny_coco without any photo already in TRAIN or in an earlier EVAL
collection (000000204805 is in both EVAL collections; it is kept once). Every record uses
the 80 COCO classes in COCO category-id order (the converters' index order), so train and
eval records share one label map and no `--class_id_map` is needed (that flag remaps raw
COCO ids 1..90, which only Model Garden's records carry).
"""

from __future__ import annotations

import json
import os

from data_tools import coco_to_tfrecord, yolo_to_tfrecord
from scdnn_tf.data import label_map, shapes

TRAIN_COCO, TRAIN_YOLO = ("coco_mini",), ("coco128",)
EVAL_COCO = ("coco_tiny", "tiny_coco")
COCO_JSON = os.path.join("annotations", "instances_train2017.json")
SPLIT_FILE = "split.json"


def fallback_groups(class_names, known=tuple(shapes.CLASSES),
                    context_pairs=tuple(shapes.CONTEXT_CLASSES)) -> dict[str, list[str]]:
    """Class groups of a layout without its own: the classes new in the layout, the tiles
    layout's context-decided classes, and the other classes (empty groups left out)."""
    context = {n for pair in context_pairs for n in pair}
    groups = {"new in layout": [n for n in class_names if n not in known],
              "context-decided (tiles)": [n for n in class_names if n in context],
              "other": [n for n in class_names if n in known and n not in context]}
    return {g: names for g, names in groups.items() if names}


def layout_groups(layout: str, class_names) -> dict[str, list[str]]:
    """`shapes.LAYOUT_GROUPS[layout]` when the generator defines it, else `fallback_groups`.

    Raises:
      ValueError: the layout's groups name a class the label map does not have.
    """
    groups = getattr(shapes, "LAYOUT_GROUPS", {}).get(layout)
    if groups is None:
        return fallback_groups(class_names)
    unknown = sorted({n for names in groups.values() for n in names} - set(class_names))
    if unknown:
        raise ValueError(f"shapes.LAYOUT_GROUPS[{layout!r}] names {unknown}, which the label "
                         f"map does not have ({list(class_names)})")
    return {g: list(names) for g, names in groups.items()}


def shapes_data(out_dir: str, layout: str, num_train: int, num_val: int, seed: int = 0,
                image_size: int = 128) -> dict:
    """Generates (or reuses) the scenes of `layout` in out_dir/shapes_<layout>.

    Returns:
      {"train_pattern", "eval_pattern", "label_map", "data_dir", "classes"}.

    Raises:
      ValueError: the generator of this checkout has no such layout.
    """
    if layout not in shapes.LAYOUTS:
        raise ValueError(f"layout {layout!r} is not in this checkout's generator "
                         f"(scdnn_tf.data.shapes.LAYOUTS = {shapes.LAYOUTS})")
    data_dir = os.path.join(out_dir, f"shapes_{layout}")
    out = shapes.ensure_shapes_dataset(data_dir, num_train, num_val, seed, image_size, layout)
    return {"train_pattern": os.path.join(data_dir, "train-*.tfrecord"),
            "eval_pattern": os.path.join(data_dir, "val-*.tfrecord"),
            "label_map": out["label_map"], "data_dir": data_dir,
            "classes": label_map.read_label_map(out["label_map"])}


def data_flags(data: dict) -> tuple[str, ...]:
    """Training flags pointing a run at `data` (demo generation aimed at its folder)."""
    return (f"--train_pattern={data['train_pattern']}", f"--eval_pattern={data['eval_pattern']}",
            f"--label_map={data['label_map']}", f"--demo_data_dir={data.get('data_dir', '')}")


def coco_names(annotations: dict, source: str) -> list[str]:
    """The category names in category-id order; ValueError unless all 80 COCO classes."""
    cats = sorted(annotations.get("categories", []), key=lambda c: c["id"])
    if len(cats) != 80:
        raise ValueError(f"{source}: {len(cats)} categories, expected the 80 COCO classes "
                         "(class indices follow the json's categories)")
    return [str(c["name"]) for c in cats]


def without_images(annotations: dict, exclude_ids) -> dict:
    """Copy of a COCO json dict without the images `exclude_ids` and their annotations."""
    exclude = set(exclude_ids)
    return {**annotations,
            "images": [i for i in annotations["images"] if i["id"] not in exclude],
            "annotations": [a for a in annotations.get("annotations", [])
                            if a.get("image_id") not in exclude]}


def _load(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"real photos: {path} not found")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _yolo_ids(image_dir: str) -> set[int]:
    """COCO ids of coco128's photos (file stems are the zero-padded ids)."""
    return {int(os.path.splitext(n)[0]) for n in os.listdir(image_dir)
            if os.path.splitext(n)[0].isdigit()}


def real_split(data_dir: str, out_dir: str) -> dict:
    """Converts the fixed split into out_dir/real_photos/{train,eval} (reused when done).

    Returns:
      {"train_pattern", "eval_pattern", "label_map", "images": {"train": n, "eval": n},
       "excluded_from_eval": [ids], "skipped": {collection: skip counts},
       "report": {collection: the converter's summary}}.

    Raises:
      FileNotFoundError: `data_dir` or one of its collections is missing.
      ValueError: a json without the 80 COCO classes, or train/eval label maps differ.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"real photos not found at {data_dir} (--real_data_dir)")
    root = os.path.join(out_dir, "real_photos")
    marker = os.path.join(root, SPLIT_FILE)
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            return json.load(f)
    jsons = {c: _load(os.path.join(data_dir, c, COCO_JSON)) for c in TRAIN_COCO + EVAL_COCO}
    names = coco_names(jsons[TRAIN_COCO[0]], os.path.join(data_dir, TRAIN_COCO[0], COCO_JSON))
    for c, coco_json in jsons.items():
        if coco_names(coco_json, os.path.join(data_dir, c, COCO_JSON)) != names:
            raise ValueError(f"{os.path.join(data_dir, c, COCO_JSON)}: category names differ "
                             f"from {TRAIN_COCO[0]}'s")
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    names_file = os.path.join(root, "coco80_names.txt")
    label_map.write_label_map(names_file, names)
    split = {"images": {"train": 0, "eval": 0}, "excluded_from_eval": [], "skipped": {},
             "report": {}}
    seen: set[int] = set()

    def convert(collection, set_name, summary):
        split["images"][set_name] += summary.images_written
        split["skipped"][collection] = summary.skip_counts()
        split["report"][collection] = summary.report()

    for c in TRAIN_COCO:
        convert(c, "train", coco_to_tfrecord.convert(
            os.path.join(data_dir, c, COCO_JSON), os.path.join(data_dir, c, "train2017"),
            os.path.join(root, "train", c), num_shards=1, num_workers=1))
        seen |= {i["id"] for i in jsons[c]["images"]}
    for c in TRAIN_YOLO:
        image_dir = os.path.join(data_dir, c, "images", "train2017")
        convert(c, "train", yolo_to_tfrecord.convert(
            image_dir, os.path.join(data_dir, c, "labels", "train2017"), names_file,
            os.path.join(root, "train", c), num_shards=1, num_workers=1))
        seen |= _yolo_ids(image_dir)
    for c in EVAL_COCO:
        ids = {i["id"] for i in jsons[c]["images"]}
        split["excluded_from_eval"] += sorted(ids & seen)
        kept = os.path.join(root, "annotations", f"{c}_eval.json")
        with open(kept, "w", encoding="utf-8") as f:
            json.dump(without_images(jsons[c], seen), f)
        convert(c, "eval", coco_to_tfrecord.convert(
            kept, os.path.join(data_dir, c, "train2017"), os.path.join(root, "eval", c),
            num_shards=1, num_workers=1))
        seen |= ids
    maps = [label_map.read_label_map(os.path.join(root, s, "label_map.txt"))
            for s in ("train", "eval")]
    if maps[0] != maps[1] or maps[0] != names:
        raise ValueError(f"{root}: train and eval label maps differ")
    split.update(train_pattern=os.path.join(root, "train", "*.tfrecord"),
                 eval_pattern=os.path.join(root, "eval", "*.tfrecord"),
                 label_map=os.path.join(root, "train", "label_map.txt"))
    with open(marker, "w", encoding="utf-8") as f:  # written last: marks a finished split
        json.dump(split, f, indent=1)
    return split
