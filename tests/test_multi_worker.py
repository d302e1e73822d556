"""Two worker processes (MultiWorkerMirroredStrategy, TF_CONFIG on loopback) vs one process.

Why the losses can match exactly, and how the data is built so that they do:

* The model side is deterministic across replica counts (see
  test_training.test_two_replicas_match_one_device): BatchNorm is frozen (`--freeze_bn`,
  its batch statistics would be per replica), every anchor is sampled for the patch loss
  (`--anchor_samples=4096` > the 1,020 anchors at 64 px), losses are averaged over the
  global batch, and weights start from the same seed. Then the step loss is the mean of
  per-image losses over the global batch: it depends on the *multiset* of images in the
  step, not on their order or on which worker holds them.
* Augmentation is made a no-op: every image is left-right symmetric with boxes symmetric
  about the vertical centre line at multiples of 1/64 (a flip gives back the same pixels
  and bit-identical boxes), and every record carries an image-level label of a class
  without a box, for which the pipeline never crops. So a record always yields the same
  tensors, whatever per-record seed its position in the stream gives it.
* The record order is not the same: the single process interleaves both shards and
  shuffles the mixed stream; each worker reads its own shard (input_context file
  sharding, 2 shards for 2 workers) and shuffles that. So the test first runs the very
  input pipeline training uses (`make_dataset` with the same seed, batch sizes and
  `InputContext`s, global seed 0 as `keras.utils.set_random_seed` sets it) over
  placeholder records whose pixels encode their index, and reads which records each
  step consumes: in the single process (4 per step) and on each worker (2 per step).
  Slot j of single-process step k is paired with slot j of the workers' step k
  (worker 0's two, then worker 1's two), paired records must have equal content, and
  union-find over the pairs gives the content classes. Each class then gets its own
  random symmetric scene, written at the same positions of the same shards. Every
  step's global batch is then the same multiset in both runs, while the two workers'
  halves differ (checked), so a missing or wrong gradient all-reduce would show.

The comparison is on the per-step loss scalars in model_dir/train (written by the chief
only); the test also checks that the other worker wrote nothing into model_dir.
"""

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scdnn_tf.data.label_map import write_label_map
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.data.records import build_example
from helpers import CLASSES, COLORS, REPO_ROOT, child_env, read_events, read_log, tiny_flags

pytestmark = pytest.mark.spawns

SIZE, PER_SHARD, SHARDS, STEPS, GLOBAL_BATCH, WORKERS = 64, 48, 2, 3, 4, 2
TIMEOUT = 420  # seconds per training process (start-up ~30 s; 2 cores shared)


def _encode_png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def _write_shards(root, examples_of_shard):
    paths = []
    for s in range(SHARDS):
        path = os.path.join(root, f"train-{s:05d}-of-{SHARDS:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for example in examples_of_shard(s):
                writer.write(example.SerializeToString())
        paths.append(path)
    return paths


def _placeholder(index):
    """A uniform image whose red value is the record's index; one extra label (no crop)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = index
    return build_example(encoded=_encode_png(image), image_format="png", height=SIZE,
                         width=SIZE, filename=f"p{index}.png", source_id=str(index),
                         image_labels=[0])


def _symmetric_scene(rng):
    """A left-right symmetric scene: 1-2 centred squares + an image label without a box."""
    image = np.full((SIZE, SIZE, 3), 128, np.uint8)
    classes = list(rng.choice(len(CLASSES), size=rng.randint(1, 3), replace=False))
    extra = int(rng.choice([c for c in range(len(CLASSES)) if c not in classes]))
    boxes = []
    for c in classes:
        side = 2 * rng.randint(SIZE // 8, SIZE // 4)  # even: centred exactly on the axis
        x0, y0 = (SIZE - side) // 2, rng.randint(0, SIZE - side)
        image[y0:y0 + side, x0:x0 + side] = COLORS[c]
        boxes.append([y0 / SIZE, x0 / SIZE, (y0 + side) / SIZE, (x0 + side) / SIZE])
    classes = [int(c) for c in classes]
    return dict(encoded=_encode_png(image), boxes=boxes, classes=classes,
                class_texts=[CLASSES[c] for c in classes], image_labels=sorted(classes + [extra]))


def _consumed(pattern, batch_size, context):
    """Record indices (placeholder red values) of the first STEPS batches of one pipeline."""
    tf.random.set_seed(0)  # what keras.utils.set_random_seed(--seed=0) does in training
    ds = make_dataset(pattern, len(CLASSES), SIZE, batch_size, training=True, seed=0,
                      input_context=context)
    return [[int(round(v)) for v in batch["image"][:, 0, 0, 0].numpy()]
            for batch in ds.take(STEPS)]


def _content_classes(single, workers):
    """Union-find over (single slot, worker slot) pairs -> {record index: class root}."""
    parent = {}

    def find(i):
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k in range(STEPS):
        merged = [i for w in workers for i in w[k]]
        for a, b in zip(single[k], merged, strict=True):
            parent[find(a)] = find(b)
    return {i: find(i) for i in range(PER_SHARD * SHARDS)}


def write_matched_dataset(root):
    """Shards whose single-process and per-worker step batches hold the same scenes.

    Returns:
      {record index: content class} and the consumed indices (single, per worker).
    """
    os.makedirs(root, exist_ok=True)
    _write_shards(root, lambda s: [_placeholder(s * PER_SHARD + r) for r in range(PER_SHARD)])
    pattern = os.path.join(root, "train-*")
    single = _consumed(pattern, GLOBAL_BATCH, tf.distribute.InputContext(1, 0, 1))
    workers = [_consumed(pattern, GLOBAL_BATCH // WORKERS,
                         tf.distribute.InputContext(WORKERS, w, WORKERS))
               for w in range(WORKERS)]
    classes = _content_classes(single, workers)
    rng = np.random.RandomState(0)
    scenes = {root_id: _symmetric_scene(rng) for root_id in sorted(set(classes.values()))}

    def example(index):
        return build_example(image_format="png", height=SIZE, width=SIZE,
                             filename=f"r{index}.png", source_id=str(index),
                             **scenes[classes[index]])

    _write_shards(root, lambda s: [example(s * PER_SHARD + r) for r in range(PER_SHARD)])
    write_label_map(os.path.join(root, "label_map.txt"), CLASSES)
    return classes, single, workers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_matched_dataset_premise(tmp_path):
    """The step batches agree as multisets of content, and the two workers' halves differ."""
    classes, single, workers = write_matched_dataset(str(tmp_path))
    for k in range(STEPS):
        halves = [sorted(classes[i] for i in w[k]) for w in workers]
        assert sorted(classes[i] for i in single[k]) == sorted(halves[0] + halves[1])
        assert halves[0] != halves[1], k
    used = {classes[i] for batches in [single, *workers] for batch in batches for i in batch}
    assert len(used) >= 6  # varied scenes, not one image repeated
    # Re-reading the real records through the pipeline gives the same global batches.
    for k, (one, two) in enumerate(zip(
            _images(str(tmp_path), GLOBAL_BATCH, tf.distribute.InputContext(1, 0, 1)),
            zip(*[_images(str(tmp_path), GLOBAL_BATCH // WORKERS,
                          tf.distribute.InputContext(WORKERS, w, WORKERS))
                  for w in range(WORKERS)]))):
        merged = np.concatenate(two)
        assert sorted(x.tobytes() for x in one) == sorted(x.tobytes() for x in merged), k


def _images(root, batch_size, context):
    tf.random.set_seed(0)
    ds = make_dataset(os.path.join(root, "train-*"), len(CLASSES), SIZE, batch_size,
                      training=True, seed=0, input_context=context)
    return [batch["image"].numpy() for batch in ds.take(STEPS)]


@pytest.mark.slow
def test_two_workers_match_single_process(tmp_path):
    data_dir = str(tmp_path / "data")
    write_matched_dataset(data_dir)
    common = [sys.executable, "-m", "scdnn_tf.train", "--freeze_bn", "--anchor_samples=4096",
              f"--global_batch_size={GLOBAL_BATCH}", f"--train_steps={STEPS}",
              f"--checkpoint_every={STEPS}", "--seed=0"]
    # A small step keeps the 3 steps in a calm regime, where float summation order
    # (all-reduce vs one device) changes the loss only in the last digits.
    lr = ["--learning_rate=0.002"]
    single_dir, multi_dir = str(tmp_path / "single"), str(tmp_path / "multi")
    ports = [free_port() for _ in range(WORKERS)]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []

    def launch(name, flags, env):
        log_path = str(tmp_path / f"{name}.log")
        with open(log_path, "wb") as log:
            procs.append((subprocess.Popen(common + tiny_flags(data_dir, flags[0]) + flags[1:] + lr,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           cwd=REPO_ROOT, env=env), log_path))

    try:
        for w in range(WORKERS):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": w}})
            launch(f"worker{w}", [multi_dir, "--strategy=multi_worker_mirrored"],
                   child_env(TF_CONFIG=tf_config))
        launch("single", [single_dir, "--strategy=one_device"], child_env())
        for proc, log_path in procs:
            assert proc.wait(timeout=TIMEOUT) == 0, read_log(log_path)[-4000:]
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    for (_, log_path), replicas in zip(procs, [WORKERS] * WORKERS + [1]):
        assert f"scdnn: {replicas} replicas" in read_log(log_path), log_path
    single = read_events(os.path.join(single_dir, "train"))
    multi = read_events(os.path.join(multi_dir, "train"))
    loss_tags = sorted(t for t in single if t.startswith("loss"))
    assert loss_tags == ["loss", "loss_label", "loss_patch", "loss_regression"]
    for tag in loss_tags:
        assert sorted(multi[tag]) == list(range(1, STEPS + 1)), tag
        for step in range(1, STEPS + 1):
            # Step 1 runs on identical weights: equal to float32 precision. Later steps run
            # on weights updated with all-reduced gradients (another float32 summation
            # order), which could in principle flip a top-k / NMS patch choice, hence the
            # looser bound. (A 0.17 % difference once seen at step 3 came from TF's racy
            # CPU CropAndResizeGradImage kernel, since replaced: crop_and_resize_grad.py.)
            # The gradient scaling is pinned exactly by tests/test_scdnn.py.
            rel = 1e-4 if step == 1 else 1e-3
            assert multi[tag][step] == pytest.approx(single[tag][step], rel=rel, abs=1e-5), (
                tag, step)
    # Only the chief (worker 0) wrote summaries and checkpoints into model_dir.
    events = os.listdir(os.path.join(multi_dir, "train"))
    assert len(events) == 1 and events[0].split(".")[-3] == str(procs[0][0].pid), events
    assert tf.train.latest_checkpoint(multi_dir).endswith(f"ckpt-{STEPS}")
    assert sorted(n for n in os.listdir(multi_dir) if "ckpt" in n) == [
        f"ckpt-{STEPS}.data-00000-of-00001", f"ckpt-{STEPS}.index"]


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_one_step_and_the_restart_continues(tmp_path):
    import re  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    from helpers import write_tiny_dataset  # noqa: PLC0415

    data_dir = write_tiny_dataset(str(tmp_path / "data"), num_train=16, num_val=2)
    model_dir = str(tmp_path / "run")
    ports = [free_port() for _ in range(WORKERS)]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    command = [sys.executable, "-m", "scdnn_tf.train", *tiny_flags(data_dir, model_dir),
               "--strategy=multi_worker_mirrored", "--train_steps=40",
               "--checkpoint_every=1000"]

    def launch(round_):
        procs = []
        for w in range(WORKERS):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": w}})
            log_path = str(tmp_path / f"r{round_}w{w}.log")
            with open(log_path, "wb") as log:
                procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               cwd=REPO_ROOT, env=child_env(TF_CONFIG=tf_config)),
                              log_path))
        return procs

    def preempt_after_three_steps(procs):
        deadline = time.monotonic() + TIMEOUT
        while len(re.findall(r"step \d+/40 ", read_log(procs[0][1]))) < 3:
            assert time.monotonic() < deadline and procs[0][0].poll() is None, (
                read_log(procs[0][1])[-3000:])
            time.sleep(0.05)
        procs[1][0].send_signal(signal.SIGTERM)  # only the non-chief is preempted

    def exit_codes(procs, before_wait=None):
        try:
            if before_wait:
                before_wait(procs)
            return [proc.wait(timeout=TIMEOUT) for proc, _ in procs]
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    procs = launch(0)
    codes = exit_codes(procs, preempt_after_three_steps)
    assert codes == [143, 143], [read_log(p)[-2000:] for _, p in procs]
    stopped = [int(re.search(r"stopped by SIGTERM after step (\d+)", read_log(p)).group(1))
               for _, p in procs]
    assert stopped[0] == stopped[1] and 3 <= stopped[0] < 40, stopped
    assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{stopped[0]}")

    procs = launch(1)
    codes = exit_codes(procs)
    assert codes == [0, 0], [read_log(p)[-2000:] for _, p in procs]
    assert f"starting at step {stopped[0]} of 40" in read_log(procs[0][1])
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-40")
