"""Shared test helpers: the tiny coloured-squares dataset, its training config and flags,
TensorBoard event reading, and the environment of training subprocesses."""

import glob
import io
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from scdnn_tf.data.label_map import write_label_map
from scdnn_tf.data.records import build_example
from scdnn_tf.modeling.weights_by_name import layers_with_variables
from scdnn_tf.core.strategy import make_strategy
from scdnn_tf.core.config import TrainConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSES = ["red", "green", "blue"]
COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def write_tiny_dataset(root, num_train=16, num_val=6, size=64, seed=0, class_names=CLASSES):
    """Coloured squares on grey (class = colour), `train-`/`val-` shards + label map.

    `class_names` (at least 3) is the label map; squares are drawn for its first three."""
    rng = np.random.RandomState(seed)
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", num_train), ("val", num_val)):
        with tf.io.TFRecordWriter(os.path.join(root, f"{split}-00000-of-00001.tfrecord")) as w:
            for i in range(n):
                img = np.full((size, size, 3), 128, np.uint8)
                present = [c for c in range(3) if rng.rand() < 0.5] or [i % 3]
                boxes = []
                for c in present:
                    s = rng.randint(size // 4, size // 2)
                    y, x = rng.randint(0, size - s, 2)
                    img[y:y + s, x:x + s] = COLORS[c]
                    boxes.append([y / size, x / size, (y + s) / size, (x + s) / size])
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, "PNG")
                w.write(build_example(
                    encoded=buf.getvalue(), image_format="png", height=size, width=size,
                    filename=f"{split}{i}.png", source_id=str(i), boxes=boxes, classes=present,
                    class_texts=[class_names[c] for c in present]).SerializeToString())
    write_label_map(os.path.join(root, "label_map.txt"), list(class_names))
    return str(root)


def tiny_config(data_dir, model_dir, **overrides):
    """A few-second SCDNN configuration on the tiny dataset."""
    values = dict(train_pattern=f"{data_dir}/train-*", eval_pattern=f"{data_dir}/val-*",
                  label_map=f"{data_dir}/label_map.txt", model_dir=str(model_dir),
                  model="scdnn", backbone="small", image_size=64, fpn_channels=16, fc_units=32,
                  num_patches=4, num_train_patches=4, anchor_sizes=(8.0, 16.0, 32.0, 64.0),
                  global_batch_size=4, train_steps=3, eval_every=3, checkpoint_every=2,
                  log_every=1, learning_rate=0.01, warmup_steps=0, strategy="one_device",
                  num_eval_images=2)
    values.update(overrides)
    return TrainConfig(**values)


def read_events(folder):
    """{tag: {step: value, image count or array (PR curves)}} from `folder`'s event files.

    Events are applied in wall-time order, whatever order the files are listed in: a
    step logged twice (before a crash and again after the resume) keeps the later value.
    """
    events = [event for path in glob.glob(os.path.join(folder, "events.out.tfevents.*"))
              for event in tf.compat.v1.train.summary_iterator(path)]
    out = {}
    for event in sorted(events, key=lambda e: e.wall_time):
        for value in event.summary.value:
            tensor = tf.make_ndarray(value.tensor)
            is_image = value.metadata.plugin_data.plugin_name == "images"
            out.setdefault(value.tag, {})[event.step] = (
                len(tensor) - 2 if is_image else float(tensor) if tensor.ndim == 0 else tensor)
    return out


def tiny_flags(data_dir, model_dir):
    """The tiny setting of test_training.tiny_config, as command-line flags."""
    return [f"--train_pattern={data_dir}/train-*", f"--label_map={data_dir}/label_map.txt",
            f"--model_dir={model_dir}", "--model=scdnn", "--backbone=small", "--image_size=64",
            "--fpn_channels=16", "--fc_units=32", "--num_patches=4", "--num_train_patches=4",
            "--anchor_sizes=8,16,32,64", "--global_batch_size=4", "--learning_rate=0.01",
            "--log_every=1", "--eval_pattern=", "--eval_every=1000"]


def child_env(**extra):
    """This process's environment for a training child: quiet TF, the repo importable, no
    inherited TF_CONFIG (only what `extra` sets)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT, **extra)
    return env


def read_log(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def two_cpu_strategy():
    """The process's one MirroredStrategy over the two logical CPUs.

    Several MirroredStrategy objects in one process collide in their collective-op
    instance keys, so every test shares the instance `make_strategy` caches.
    """
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.extended.worker_devices
    return strategy


_OBJECT = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
           "<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
           "</bndbox></object>")


def write_voc(root, items, year="2007", split="trainval", size=(50, 100)):
    """Writes VOC<year> with `items` = {image_id: [(name, difficult, x0, y0, x1, y1)]}.

    Images are `size` = (height, width) RGB JPEGs. Returns the VOCdevkit path.
    """
    voc = os.path.join(root, "VOCdevkit", f"VOC{year}")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    h, w = size
    for image_id, objects in items.items():
        Image.new("RGB", (w, h), (120, 30, 60)).save(
            os.path.join(voc, "JPEGImages", f"{image_id}.jpg"))
        body = "".join(_OBJECT.format(name=n, difficult=d, x0=x0, y0=y0, x1=x1, y1=y1)
                       for n, d, x0, y0, x1, y1 in objects)
        with open(os.path.join(voc, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
                    f"<height>{h}</height><depth>3</depth></size>{body}</annotation>")
    with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in items))
    return os.path.join(root, "VOCdevkit")


def randomize_batchnorm(model, seed=0):
    """Random BatchNorm parameters and statistics (the initial ones are an identity)."""
    rng = np.random.default_rng(seed)
    for layer in layers_with_variables(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.0, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])


def torch_state_dict(model):
    """Torch-layout state dict of a Keras model (the inverse of the converter's mapping)."""
    state = {}
    for layer in layers_with_variables(model):
        prefix = layer.name.replace("_", ".")
        values = [w.numpy() for w in layer.weights]
        if isinstance(layer, keras.layers.Conv2D):
            state[f"{prefix}.weight"] = values[0].transpose(3, 2, 0, 1)  # [out, in/g, kh, kw]
        elif isinstance(layer, keras.layers.BatchNormalization):
            for key, value in zip(("weight", "bias", "running_mean", "running_var"), values):
                state[f"{prefix}.{key}"] = value
            state[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)
        else:
            state[f"{prefix}.weight"], state[f"{prefix}.bias"] = values[0].T, values[1]
    # safetensors writes an array's raw buffer: it must be C-contiguous like torch's.
    return {k: np.ascontiguousarray(v) for k, v in state.items()}
