"""The training configuration: one dataclass, its validation, and the absl flags mirroring it.

`TrainConfig` is the single source of truth: `define_flags()` creates one absl flag per
field (same name, default and help), `config_from_flags()` reads them back, and
`TrainConfig.validate()` checks every value with a message naming the flag. `train.py`
and `evaluate.py` share these flags, so one flagfile (`configs/*.flags`) serves both.
A run writes `flags.txt` (a reusable flagfile) and `config.json` into its model_dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import flags

from scdnn_tf.core.precision import PRECISIONS, fold_old_flag
from scdnn_tf.data.randaugment import parse_randaugment
from scdnn_tf.modeling.aggregation import AGGREGATIONS, FUSIONS
from scdnn_tf.modeling.backbones import BACKBONE_NAMES, KERAS_IMAGENET_NAMES
from scdnn_tf.modeling.hub_weights import check_hub_arch, is_hub_spec
from scdnn_tf.modeling.losses import LABEL_LOSSES
from scdnn_tf.modeling.relation import RELATIONS
from scdnn_tf.modeling.scdnn import BRANCHES, MAX_LEVEL, MIN_LEVELS
from scdnn_tf.utils import files

MODELS = ("scdnn", "baseline")
OPTIMIZERS = ("sgd", "adamw")
STRATEGIES = ("mirrored", "multi_worker_mirrored", "one_device")
LR_SCHEDULES = ("cosine", "onecycle")
# Fields that define the network's variables: a run resumed from a model_dir must agree.
ARCHITECTURE_FIELDS = ("model", "backbone", "image_size", "fpn_channels", "fc_units",
                       "min_level", "anchor_sizes", "aspect_ratios", "branches", "relation",
                       "relation_layers", "context_scales", "global_patch")


def _field(default, help_text, choices=None):
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass
class TrainConfig:
    """Every value a user tunes for training and evaluation (one absl flag each)."""

    # Data.
    train_pattern: str = _field("", "Glob of training TFRecord shards.")
    eval_pattern: str = _field("", "Glob of validation TFRecord shards ('' = no evaluation).")
    label_map: str = _field("", "Label map file: one class name per line.")
    class_id_map: str = _field("", "Optional file of source class ids, one per line, in label "
                                   "map order (records holding dataset ids, e.g. raw COCO 1..90).")
    demo_data_dir: str = _field("", "If set and train_pattern matches no file, generate the "
                                    "synthetic shapes dataset here first.")
    max_boxes: int = _field(100, "Boxes per image kept by the input pipeline (padding size M).")
    augment: bool = _field(True, "Random horizontal flip and scale-crop in training.")
    color_jitter: bool = _field(False, "Random brightness/contrast/saturation in training.")
    model_dir: str = _field("", "Checkpoints, TensorBoard logs, flags.txt, config.json, label map.")
    # Model.
    model: str = _field("scdnn", "Network: the SCDNN, or the GAP baseline classifier.", MODELS)
    backbone: str = _field("small", "Backbone network.", BACKBONE_NAMES)
    backbone_weights: str = _field("", "'' (random init), 'imagenet' (keras.applications "
                                       "backbones: resnet50, mobilenet_v2, ...), a "
                                       ".weights.h5 path, or hf-hub:timm/NAME[@REV] "
                                       "(downloaded, converted and cached; e.g. "
                                       "hf-hub:timm/resnext101_32x8d.tv_in1k).")
    freeze_bn: bool = _field(False, "Keep backbone BatchNorm layers frozen (inference mode).")
    freeze_stages: int = _field(0, "Freeze the backbone stem and the first k-1 stages (0 = none).")
    # Fine-tuning from another run (--init_from; core/init_from.py).
    init_from: str = _field("", "Start a new run from another run's weights: its model_dir "
                                "(newest checkpoint) or a checkpoint prefix DIR/ckpt-N. "
                                "Variables are matched by name and shape; the output layers "
                                "take the rows of the classes named in both label maps (the "
                                "source's label_map.txt beside its checkpoint). Optimizer "
                                "state starts fresh. Ignored when --model_dir holds a "
                                "checkpoint of its own (the run resumes).")
    image_size: int = _field(448, "Input side S in pixels (a multiple of 32).")
    fpn_channels: int = _field(256, "Feature pyramid width.")
    min_level: int = _field(2, "Finest pyramid level: 2 (P2..P5, the paper) or 3 (P3..P5: no "
                               "stride-4 map, a lighter head).")
    anchor_sizes: tuple = _field((32.0, 64.0, 128.0, 256.0), "Anchor side in pixels, one per "
                                 "pyramid level (--min_level..5).")
    aspect_ratios: tuple = _field((0.5, 1.0, 2.0), "Anchor height/width ratios.")
    num_patches: int = _field(32, "Object patches per image at inference.")
    num_train_patches: int = _field(64, "Object proposals per image in training (+ ground truth).")
    anchor_samples: int = _field(256, "Anchors sampled per image for the patch loss (at most "
                                      "half positive).")
    context_scale: float = _field(2.0, "Context patch = object patch scaled about its centre "
                                       "(1.0 = no context).")
    context_scales: tuple = _field((), "Several context scales (e.g. 1.5,2.5,4): each context "
                                   "patch is cropped at every scale and a learned per-patch "
                                   "gate weights them ('' = the single --context_scale).")
    relation: str = _field("none", "Relation module: 'attention' lets the patches of an image "
                                   "attend to each other (with their box geometry) before the "
                                   "label predictors decide.", RELATIONS)
    relation_layers: int = _field(1, "Transformer encoder layers of the relation module.")
    global_patch: bool = _field(False, "Add the whole image as one more patch of both branches.")
    branches: str = _field("both", "Label predictor branches.", BRANCHES)
    aggregation: str = _field("max", "Patch-to-image pooling.", AGGREGATIONS)
    fusion: str = _field("mean", "Fusion of the two branches' image logits.", FUSIONS)
    fc_units: int = _field(1024, "Label predictor hidden width.")
    dropout: float = _field(0.0, "Label predictor dropout rate.")
    regression_weight: float = _field(1.0, "w_r: location regression loss weight.")
    patch_weight: float = _field(1.0, "w_p: patch classification loss weight.")
    label_weight: float = _field(1.0, "w_l: label prediction loss weight.")
    # Optimization.
    global_batch_size: int = _field(32, "Images per step over all replicas.")
    train_steps: int = _field(1000, "Total optimizer steps.")
    optimizer: str = _field("sgd", "Optimizer.", OPTIMIZERS)
    learning_rate: float = _field(0.01, "Peak learning rate (after warm-up, then cosine to 0).")
    warmup_steps: int = _field(0, "Linear warm-up steps from 0 to learning_rate.")
    momentum: float = _field(0.9, "SGD momentum.")
    nesterov: bool = _field(False, "Nesterov momentum (SGD).")
    weight_decay: float = _field(1e-4, "Decoupled weight decay (biases and norm scales excluded).")
    global_clipnorm: float = _field(0.0, "Clip gradients to this global norm (0 = off).")
    ema_decay: float = _field(0.0, "Exponential moving average of the weights (0 = off); "
                                   "evaluations score the raw and the averaged weights, "
                                   "export takes the better.")
    jit_compile: bool = _field(False, "XLA-compile the train step.")
    # Compute precision: --precision, and --mixed_precision, its old name for mixed_float16
    # (folded into `precision` by __post_init__; both are written to config.json).
    precision: str = _field("float32", "Compute precision: float32; mixed_bfloat16 (16-bit "
                                       "compute, float32 variables: fast on CPUs with AMX / "
                                       "AVX512-BF16 and on GPUs of compute capability >= 8.0); "
                                       "mixed_float16 (with loss scaling: older GPUs); auto "
                                       "(picks one of them for this machine and logs why).",
                            PRECISIONS)
    mixed_precision: bool = _field(False, "Old name of --precision=mixed_float16.")
    strategy: str = _field("mirrored", "tf.distribute strategy.", STRATEGIES)
    seed: int = _field(0, "Seed for weight init and data shuffling/augmentation.")
    # Schedule of side jobs (in steps).
    eval_every: int = _field(1000, "Evaluate (and write eval summaries) every N steps.")
    checkpoint_every: int = _field(500, "Save a checkpoint every N steps (and at the end).")
    log_every: int = _field(50, "Log line and TensorBoard train scalars every N steps.")
    keep_checkpoints: int = _field(3, "Checkpoints kept in model_dir.")
    num_eval_images: int = _field(4, "Validation images drawn into TensorBoard per evaluation.")
    eval_threshold: float = _field(0.5, "Score threshold for CP/CR/CF1/OP/OR/OF1.")
    profile_steps: str = _field("", "Write a profiler trace of global steps K..L ('K,L', or "
                                    "'K' for one step) for TensorBoard's Profile tab "
                                    "('' = off).")
    # Training recipe: label loss, RandAugment / Cutout, schedule (docs/training.md).
    label_loss: str = _field("bce", "Label loss L_l: binary cross-entropy (the paper), focal "
                                    "loss or the asymmetric loss (ASL).", LABEL_LOSSES)
    asl_gamma_neg: float = _field(4.0, "ASL focusing exponent of the negatives.")
    asl_gamma_pos: float = _field(0.0, "ASL focusing exponent of the positives.")
    asl_clip: float = _field(0.05, "ASL probability margin: negatives count from p > clip.")
    focal_gamma: float = _field(2.0, "Focal loss exponent.")
    randaugment: str = _field("", "RandAugment 'N,M': N ops per training image at magnitude "
                                  "M in 0..10 (e.g. 2,9); geometric ops move the boxes "
                                  "('' = off).")
    cutout: float = _field(0.0, "Cutout: one grey hole of this fraction of the training "
                                "image's height and width (e.g. 0.5; 0 = off).")
    lr_schedule: str = _field("cosine", "cosine: --warmup_steps linear warm-up, then cosine "
                                        "to 0; onecycle: linear rise from learning_rate / "
                                        "--onecycle_div_factor to learning_rate at "
                                        "--lr_peak_fraction of the steps, then cosine down to "
                                        "learning_rate / (div * final_div).", LR_SCHEDULES)
    lr_peak_fraction: float = _field(0.2, "One-cycle: fraction of --train_steps at which the "
                                          "learning rate peaks (its warm-up).")
    onecycle_div_factor: float = _field(25.0, "One-cycle: start at learning_rate / this.")
    onecycle_final_div_factor: float = _field(1e4, "One-cycle: end at the start rate / this.")

    def __post_init__(self):
        # A conflicting pair raises here (ValueError naming both flags).
        self.precision = fold_old_flag(self.precision, self.mixed_precision)

    def validate(self) -> "TrainConfig":
        """Checks every value; raises ValueError naming the flag and echoing the bad value.

        File existence is checked here too (patterns must match at least one file), so
        call it after generating demo data. Returns self for chaining.
        """
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            value = getattr(self, f.name)
            if choices and value not in choices:
                _fail(f.name, value, f"must be one of {', '.join(choices)}")
        _require(self, "model_dir", bool(self.model_dir), "is required")
        _require(self, "label_map", os.path.isfile(self.label_map), "must name an existing file")
        _require(self, "train_pattern", bool(_glob(self.train_pattern)),
                 "matches no file" if self.train_pattern else "is required")
        if self.eval_pattern:
            _require(self, "eval_pattern", bool(_glob(self.eval_pattern)), "matches no file")
        if is_hub_spec(self.backbone_weights):
            try:
                check_hub_arch(self.backbone_weights, self.backbone)
            except ValueError as e:
                raise ValueError(f"--backbone_weights: {e} (--backbone={self.backbone})") from None
        for name in ("class_id_map", "backbone_weights"):
            value = getattr(self, name)
            local = value and value != "imagenet" and not is_hub_spec(value)
            if local and not os.path.isfile(value):
                _fail(name, value, "must name an existing file")
        if self.init_from:  # --init_from
            _require(self, "init_from", os.path.isdir(self.init_from)
                     or os.path.isfile(self.init_from + ".index"),
                     "must be a model_dir or a checkpoint prefix (MODEL_DIR/ckpt-N)")
            _require(self, "init_from", os.path.abspath(self.init_from.rstrip("/"))
                     != os.path.abspath(self.model_dir.rstrip("/")), "must not be --model_dir")
        if self.backbone_weights == "imagenet" and self.backbone not in KERAS_IMAGENET_NAMES:
            _fail("backbone_weights", "imagenet", f"is only available for --backbone in "
                  f"{', '.join(KERAS_IMAGENET_NAMES)}, not {self.backbone}; pass a converted "
                  ".weights.h5 path")
        _require(self, "image_size", self.image_size >= 64 and self.image_size % 32 == 0,
                 "must be a multiple of 32, >= 64")
        positive = ("fpn_channels", "num_patches", "num_train_patches", "anchor_samples",
                    "fc_units", "max_boxes",
                    "global_batch_size", "train_steps", "eval_every", "checkpoint_every",
                    "log_every", "keep_checkpoints", "learning_rate")
        for name in positive:
            _require(self, name, getattr(self, name) > 0, "must be > 0")
        non_negative = ("freeze_stages", "regression_weight", "patch_weight", "label_weight",
                        "weight_decay", "global_clipnorm", "warmup_steps", "num_eval_images")
        for name in non_negative:
            _require(self, name, getattr(self, name) >= 0, "must be >= 0")
        _require(self, "freeze_stages", self.freeze_stages <= 5, "must be in 0..5")
        _require(self, "context_scale", self.context_scale >= 1.0, "must be >= 1.0")
        scales = self.context_scales
        _require(self, "context_scales", not scales or (
            min(scales) >= 1.0 and len(set(scales)) == len(scales)),
            "must be distinct scales, each >= 1.0")
        _require(self, "relation_layers", 1 <= self.relation_layers <= 4, "must be in 1..4")
        for name in ("momentum", "ema_decay", "dropout"):
            _require(self, name, 0.0 <= getattr(self, name) < 1.0, "must be in [0, 1)")
        _require(self, "eval_threshold", 0.0 <= self.eval_threshold <= 1.0, "must be in [0, 1]")
        _require(self, "warmup_steps", self.warmup_steps < self.train_steps,
                 f"must be < --train_steps={self.train_steps}")
        _require(self, "min_level", self.min_level in MIN_LEVELS, f"must be one of {MIN_LEVELS}")
        levels = MAX_LEVEL + 1 - self.min_level
        _require(self, "anchor_sizes",
                 len(self.anchor_sizes) == levels and min(self.anchor_sizes) > 0,
                 f"needs {levels} positive sizes (P{self.min_level}..P5)")
        _require(self, "aspect_ratios", len(self.aspect_ratios) > 0 and min(self.aspect_ratios) > 0,
                 "needs positive ratios")
        try:
            steps = parse_profile_steps(self.profile_steps)
        except ValueError:
            steps = (0, 0)
        if steps and not 1 <= steps[0] <= steps[1] <= self.train_steps:
            _fail("profile_steps", self.profile_steps,
                  f"must be 'K,L' (or 'K') with 1 <= K <= L <= --train_steps={self.train_steps}")
        if self.regression_weight + self.patch_weight + self.label_weight == 0:
            _fail("label_weight", self.label_weight, "all three loss weights are 0")
        self._validate_recipe()
        return self

    def _validate_recipe(self) -> None:
        for name in ("asl_gamma_neg", "asl_gamma_pos", "focal_gamma"):
            _require(self, name, 0.0 <= getattr(self, name) < float("inf"), "must be >= 0")
        for name in ("asl_clip", "cutout"):
            _require(self, name, 0.0 <= getattr(self, name) < 1.0, "must be in [0, 1)")
        parse_randaugment(self.randaugment)  # ValueError naming --randaugment and the value
        _require(self, "lr_peak_fraction", 0.0 < self.lr_peak_fraction < 1.0,
                 "must be in (0, 1)")
        for name in ("onecycle_div_factor", "onecycle_final_div_factor"):
            _require(self, name, getattr(self, name) >= 1.0, "must be >= 1")
        if self.lr_schedule == "onecycle" and self.warmup_steps:
            _fail("warmup_steps", self.warmup_steps, "is for --lr_schedule=cosine; one-cycle "
                  "warms up over --lr_peak_fraction of the steps")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Builds a config from `to_dict()` output; an unknown key or a value of the wrong
        type (e.g. `"image_size": "448"`) is an error naming it."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        for key, value in values.items():
            if not _same_kind(value, defaults[key]):
                raise ValueError(f"{key!r} is {value!r}, not a value of its kind "
                                 f"({type(defaults[key]).__name__}, like {defaults[key]!r})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def write(self, model_dir: str) -> None:
        """Writes `flags.txt` (an absl flagfile reproducing the run) and `config.json`."""
        os.makedirs(model_dir, exist_ok=True)
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, bool):
                lines.append(f"--{key}" if value else f"--no{key}")
            elif isinstance(value, list):
                lines.append(f"--{key}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"--{key}={value}")
        # Whole files: a kill or a full disk never leaves a truncated config.json.
        files.write_atomically(os.path.join(model_dir, "flags.txt"), "\n".join(lines) + "\n")
        files.write_atomically(os.path.join(model_dir, "config.json"),
                               json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def read(cls, model_dir: str) -> "TrainConfig":
        """Reads `config.json` from a model_dir written by `write`; a damaged file is a
        ValueError naming --model_dir, the file and the position."""
        path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: is {model_dir} a training model_dir?")
        with files.flag_errors("model_dir", model_dir):
            values = files.read_json(path)
            if not isinstance(values, dict):
                raise ValueError(f"{path}: expected a JSON object of flag values, got "
                                 f"{type(values).__name__}")
            try:
                return cls.from_dict(values)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}: {e}") from None


def _same_kind(value, default) -> bool:
    """Whether a config.json value fits the field whose default is `default`."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return number(value)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(number(v) for v in value)
    return isinstance(value, type(default))


def parse_profile_steps(value: str) -> tuple[int, int] | None:
    """'K,L' -> (K, L); 'K' -> (K, K); '' -> None. Raises ValueError otherwise."""
    if not value.strip():
        return None
    parts = [int(v) for v in value.split(",")]  # ValueError on a non-integer
    if len(parts) not in (1, 2):
        raise ValueError(f"profile steps {value!r} must be 'K,L' or 'K'")
    return parts[0], parts[-1]


def _glob(pattern: str) -> list[str]:
    import tensorflow as tf  # noqa: PLC0415 (keep `import train_config` light)
    return tf.io.gfile.glob(pattern) if pattern else []


def _fail(name: str, value, problem: str):
    raise ValueError(f"--{name}={value!r} {problem}")


def _require(config: TrainConfig, name: str, ok: bool, problem: str) -> None:
    if not ok:
        _fail(name, getattr(config, name), problem)


def define_flags(flag_values=flags.FLAGS, exclude: tuple[str, ...] = ()) -> None:
    """Defines one absl flag per TrainConfig field (skipping `exclude`) in `flag_values`."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        help_text = f.metadata["help"]
        if f.metadata["choices"]:
            flags.DEFINE_enum(f.name, f.default, list(f.metadata["choices"]), help_text,
                              flag_values=flag_values)
        elif isinstance(f.default, bool):
            flags.DEFINE_bool(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, int):
            flags.DEFINE_integer(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, float):
            flags.DEFINE_float(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, tuple):
            flags.DEFINE_list(f.name, [str(v) for v in f.default], help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(f.name, f.default, help_text, flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS, only_present: bool = False) -> dict[str, Any]:
    """TrainConfig field values from parsed flags, as a dict.

    Args:
      flag_values: parsed absl FlagValues.
      only_present: return only the flags given on the command line or in a flagfile.

    Raises:
      ValueError: a list flag with a non-numeric item (named); `--mixed_precision` with a
        `--precision` other than mixed_float16.
    """
    if "precision" in flag_values and "mixed_precision" in flag_values:
        fold_old_flag(flag_values["precision"].value, flag_values["mixed_precision"].value,
                      precision_given=flag_values["precision"].present)
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in flag_values or (only_present and not flag_values[f.name].present):
            continue
        value = flag_values[f.name].value
        if isinstance(f.default, tuple):
            try:
                value = tuple(float(v) for v in value)
            except ValueError:
                _fail(f.name, ",".join(value), "must be a comma-separated list of numbers")
        values[f.name] = value
    return values
