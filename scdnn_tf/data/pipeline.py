"""The tf.data input pipeline: sharded TFRecords -> batches for training and evaluation.

Each batch is a dict:
  image          [B, S, S, 3] float32, RGB in [0, 255]
  boxes          [B, M, 4] float32, normalized [ymin, xmin, ymax, xmax], zero padded
  box_classes    [B, M] int32, class index, -1 = padding
  labels         [B, C] float32 multi-hot
  label_weights  [B, C] float32, 0 = ignore this class for this image

Label rules (per image, after augmentation):
  * A class is positive if at least one of its boxes that is neither crowd nor difficult
    is still in the image (a crop may remove boxes; the labels follow).
  * A class present only through difficult boxes gets label 0 and weight 0 (VOC: such
    objects are ignored in evaluation). Difficult boxes are not box targets either.
  * Crowd boxes (COCO `is_crowd=1`) are neither labels nor box targets.
  * Image-level labels (`image/class/label`) of classes that have no box at all in the
    record are positive as given. Such images (labels-only datasets) are never
    cropped, because a crop could cut the object out while the label stays.
  * Records without `image/class/label` derive their labels from the boxes alone.
More than `max_boxes` target boxes: the first `max_boxes` in record order are kept as
box targets (the labels still count every box).
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from scdnn_tf.data import augment as augment_lib
from scdnn_tf.data import preprocess, randaugment, record_checks, records, shards

AUTOTUNE = tf.data.AUTOTUNE


def list_shards(file_pattern) -> list[str]:
    """Sorted files matching a glob pattern (or a list of patterns); ValueError if none."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise ValueError(f"no file matches the pattern {file_pattern!r}")
    return files


def count_records(file_pattern) -> int:
    """Records in the shards matching `file_pattern` (from the record headers: cheap)."""
    return sum(shards.scan_tfrecord(path)[0] for path in list_shards(file_pattern))


def _require_records(pattern, files, counts) -> None:
    # An empty dataset under repeat() would spin forever without yielding a batch.
    if sum(counts) == 0:
        raise ValueError(f"{pattern!r}: the {len(files)} TFRecord shard(s) it matches hold 0 "
                         f"records ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})")


def multi_hot(indices: tf.Tensor, num_classes: int) -> tf.Tensor:
    """float32 [C] with 1 at each index in `indices` [K]; indices of -1 are ignored."""
    hot = tf.one_hot(tf.cast(indices, tf.int32), num_classes, dtype=tf.float32)
    return tf.minimum(tf.reduce_sum(hot, axis=0), 1.0)


def labels_from_objects(classes, is_crowd, difficult, extra_labels, num_classes):
    """Image labels and weights from the boxes that remain (see the module docstring).

    Args:
      classes: int32 [N] class of each remaining box.
      is_crowd, difficult: int32 [N] 0/1 flags.
      extra_labels: int32 [K] image-level labels of classes without any box in the record.
      num_classes: C.

    Returns:
      (labels [C] float32 multi-hot, label_weights [C] float32).
    """
    crowd = tf.cast(is_crowd, tf.bool)
    hard = tf.cast(difficult, tf.bool)
    plain = tf.where(crowd | hard, -1, classes)
    positive = tf.maximum(multi_hot(plain, num_classes), multi_hot(extra_labels, num_classes))
    difficult_only = multi_hot(tf.where(hard & ~crowd, classes, -1), num_classes) * (1.0 - positive)
    return positive, 1.0 - difficult_only


def _class_mapper(class_id_map, num_classes):
    """Returns fn(ids [K] int32, where str tensor) -> validated contiguous ids [K] int32."""
    table = None
    if class_id_map is not None:
        if not class_id_map:
            raise ValueError("class_id_map is empty")
        keys = tf.constant([int(k) for k in class_id_map], tf.int64)
        values = tf.constant([int(v) for v in class_id_map.values()], tf.int64)
        if int(tf.reduce_max(values)) >= num_classes or int(tf.reduce_min(values)) < 0:
            raise ValueError(f"class_id_map values must be in 0..{num_classes - 1}, "
                             f"got {sorted(set(class_id_map.values()))}")
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), -1)

    def mapper(ids, where):
        if table is not None:
            mapped = tf.cast(table.lookup(tf.cast(ids, tf.int64)), tf.int32)
            missing = tf.debugging.Assert(
                tf.reduce_all(mapped >= 0),
                ["class ids not in class_id_map:", tf.boolean_mask(ids, mapped < 0), "in", where])
            with tf.control_dependencies([missing]):
                ids = tf.identity(mapped)
        bad = (ids < 0) | (ids >= num_classes)
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [f"class index outside 0..{num_classes - 1} (num_classes={num_classes}):",
             tf.boolean_mask(ids, bad), "in", where])
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    return mapper


def _pad(tensor, size, value):
    """Keeps the first `size` rows of `tensor` and pads with `value` up to `size`."""
    tensor = tensor[:size]
    pad = size - tf.shape(tensor)[0]
    paddings = [[0, pad]] + [[0, 0]] * (len(tensor.shape) - 1)
    return tf.pad(tensor, paddings, constant_values=value)


def make_example_fn(num_classes, image_size, max_boxes, training, augment=True,
                    color_jitter=False, scale_range=(0.5, 1.0), class_id_map=None,
                    class_names=None, truncation=None, randaugment_spec=None, cutout=0.0):
    """Returns fn(serialized, seed [2], context="") -> one unbatched example dict (see
    module doc); `context` (e.g. " at index 7 of shard PATH") is added to every message
    naming the record.

    `class_names` (the label map) checks each record's stored class names;
    `truncation` (a `record_checks.TruncationCounter`) counts max_boxes truncation;
    `randaugment_spec` (N, M) and `cutout` (a side fraction) add RandAugment and Cutout
    to the training augmentation (`randaugment.py`).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(max_boxes, int) or max_boxes < 1:
        raise ValueError(f"max_boxes must be a positive int, got {max_boxes!r}")
    map_ids = _class_mapper(class_id_map, num_classes)
    do_augment = training and augment
    extra_fn = randaugment.make_augmenter(randaugment_spec, cutout)
    names = record_checks.label_map_tensor(class_names)

    def fn(serialized, seed, context=None):
        ex = records.parse_example(serialized, "" if context is None else context)
        where = ex["where"]
        classes = map_ids(ex["classes"], where)
        if names is not None:
            classes = record_checks.check_class_texts(classes, ex["class_texts"], names, where)
        image_labels = map_ids(ex["image_labels"], where)
        # Image labels of classes that have no box (of any kind) in the record.
        unbacked = multi_hot(image_labels, num_classes) * (1.0 - multi_hot(classes, num_classes))
        extra_labels = tf.cast(tf.where(unbacked > 0)[:, 0], tf.int32)
        boxes = ex["boxes"]
        if do_augment:
            crop = tf.logical_and(tf.size(classes) > 0, tf.size(extra_labels) == 0)
            image, boxes, keep = augment_lib.decode_and_augment(
                ex["encoded"], boxes, seed, image_size, scale_range, crop, color_jitter, where,
                extra_fn)
        else:
            # Exactly what the exported SavedModel does to its input (serving.py).
            image = preprocess.resize_image(preprocess.decode_image(ex["encoded"], where),
                                            image_size)
            keep = tf.ones_like(classes, tf.bool)
        kept = lambda t: tf.boolean_mask(t, keep)  # noqa: E731
        classes, boxes = kept(classes), kept(boxes)
        is_crowd, difficult = kept(ex["is_crowd"]), kept(ex["difficult"])
        labels, weights = labels_from_objects(classes, is_crowd, difficult, extra_labels,
                                              num_classes)
        target = tf.equal(is_crowd + difficult, 0)
        if truncation is not None:
            with tf.control_dependencies([truncation.count(
                    tf.reduce_sum(tf.cast(target, tf.int32)), max_boxes)]):
                target = tf.identity(target)
        return {
            "image": image,
            "boxes": _pad(tf.boolean_mask(boxes, target), max_boxes, 0.0),
            "box_classes": _pad(tf.boolean_mask(classes, target), max_boxes, -1),
            "labels": labels,
            "label_weights": weights,
        }

    return fn


def _named_records(path, count, skip_corrupt, stats) -> tf.data.Dataset:
    """(record, " at index I of shard PATH") pairs of one shard: every message about a
    record names the file it came from."""
    return shards.shard_dataset(path, count, skip_corrupt, stats).enumerate().map(
        lambda index, record: (record, tf.strings.join(
            [" at index ", tf.strings.as_string(index), " of shard ", path])))


def make_dataset(file_pattern, num_classes, image_size, batch_size, training, max_boxes=100,
                 shuffle_buffer=1024, augment=True, color_jitter=False, scale_range=(0.5, 1.0),
                 class_id_map=None, skip_corrupt=False, seed=None, repeat=None,
                 drop_remainder=None, num_parallel_calls=AUTOTUNE, input_context=None,
                 stats=None, class_names=None, truncation=None,
                 check_first: int = 4, randaugment_spec=None,
                 cutout=0.0) -> tf.data.Dataset:
    """Builds the batched dataset (dict of tensors, see the module docstring).

    Args:
      file_pattern: glob (or list of globs) of TFRecord shards.
      num_classes: C; a class index >= C (after `class_id_map`) is an error.
      image_size: S, output side in pixels.
      batch_size: per input pipeline (per-replica when used with a tf.distribute
        strategy's `distribute_datasets_from_function`).
      training: True: shuffled files and records, augmentation, repeat; False: files in
        sorted order, deterministic record order, no augmentation.
      max_boxes: M, box slots per image.
      shuffle_buffer: record shuffle buffer (training only).
      augment: flip + scale-crop in training; `color_jitter` adds colour jitter.
      scale_range: side-fraction range of the random crop.
      class_id_map: {source class id: contiguous index}, e.g. raw COCO ids 1..90 of TF
        Model Garden records; an id not in the map is an error naming it.
      skip_corrupt: skip (with a warning, counted in `stats`) the remainder of damaged
        shards instead of failing with an error naming the shard.
      seed: makes shuffling and augmentation reproducible (and ordering deterministic).
      repeat: repeat forever; default True in training, False otherwise.
      drop_remainder: default True in training (static batch size), False otherwise.
      num_parallel_calls: parallelism of reading and decoding.
      input_context: a `tf.distribute.InputContext`; each input pipeline reads its own
        subset of the shards (of the records, when there are fewer shards than pipelines).
      stats: optional `shards.ShardStats` collecting skipped damaged shards.
      class_names: the label map; a record whose stored class names differ is an error
        naming the record and both names.
      truncation: optional `record_checks.TruncationCounter` counting examples with more
        than `max_boxes` target boxes.
      check_first: records at the start of each shard checked in Python when the
        dataset is built (`record_checks.check_first_records`: class range, names, list
        lengths; a ValueError naming record and shard); 0 skips it. Every record is still
        checked inside the pipeline as it is read.
      randaugment_spec: None or (N, M): RandAugment in training augmentation (geometric
        ops only on images that may be cropped).
      cutout: Cutout's side fraction in training augmentation (0 = off).

    Returns:
      A `tf.data.Dataset` of batch dicts.

    Raises:
      ValueError: no shard, no record, a damaged shard (without `skip_corrupt`), or one
        of the first records failing a check. While iterating, a record failing a check
        raises `tf.errors.InvalidArgumentError` whose message names the record and its
        shard (`input_errors.input_errors` turns it into one line).
    """
    files = list_shards(file_pattern)
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = (not training) or seed is not None
    counts = []
    for path in files:
        count, problem = shards.scan_tfrecord(path)
        if problem is not None:
            if not skip_corrupt:
                raise ValueError(f"corrupt TFRecord shard {path}: {problem} after {count} records "
                                 "(pass skip_corrupt=True to skip the rest of it)")
            logging.warning("corrupt TFRecord shard %s: %s; skipping it after %d records",
                            path, problem, count)
            if stats is not None:
                stats.scan_skips[path] = problem
        counts.append(count)
    _require_records(file_pattern, files, counts)
    if check_first:
        record_checks.check_first_records(files, num_classes, class_names, class_id_map,
                                          per_shard=check_first)

    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    shard_files = pipelines > 1 and len(files) >= pipelines
    if shard_files:
        files, counts = files[pipeline_id::pipelines], counts[pipeline_id::pipelines]
        _require_records(f"{file_pattern} (input pipeline {pipeline_id} of {pipelines})",
                         files, counts)

    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(counts, tf.int64)))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        lambda path, count: _named_records(path, count, skip_corrupt, stats),
        cycle_length=min(len(files), 8), block_length=1, num_parallel_calls=num_parallel_calls,
        deterministic=deterministic)
    if pipelines > 1 and not shard_files:
        ds = ds.shard(pipelines, pipeline_id)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # One stateless seed pair per record: reproducible with `seed`, fresh per epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    example_fn = make_example_fn(num_classes, image_size, max_boxes, training, augment,
                                 color_jitter, scale_range, class_id_map, class_names,
                                 truncation, randaugment_spec, cutout)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda record, seed: example_fn(record[0], seed, record[1]),
        num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(AUTOTUNE)
