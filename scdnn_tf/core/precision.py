"""Compute precision: the `--precision` choices, `auto`'s hardware rule, the Keras policy.

`float32` computes everything in float32. `mixed_bfloat16` and `mixed_float16` keep the
variables in float32 and compute the convolutions and dense layers in 16 bits, the
model's float32 islands aside (box math, top-k / NMS, crop sampling, BatchNorm
statistics, losses and logits; docs/training.md lists them). Only `mixed_float16` needs
loss scaling (Keras wraps the optimizer in a `LossScaleOptimizer` at `compile`):
bfloat16 has float32's exponent range.

`auto` picks by hardware (`choose_precision`, a pure function of the CPU flags text and
the GPUs' details, so it is testable anywhere): mixed_bfloat16 where bfloat16 is native
(an x86 CPU with AMX-BF16 or AVX512-BF16; a GPU of compute capability >= 8.0),
mixed_float16 on older GPUs, float32 otherwise (CPUs without native bfloat16 emulate it,
slower than float32).
"""

from __future__ import annotations

import contextlib
import re

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
# x86 /proc/cpuinfo flags of native bfloat16 arithmetic (AMX tiles, AVX-512 dot products).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Ampere (8.0) and later compute bfloat16 in their tensor cores.
BF16_GPU_CAPABILITY = (8, 0)


def fold_old_flag(precision: str, mixed_precision: bool, precision_given: bool = False) -> str:
    """`--precision` with `--mixed_precision` (its old name for mixed_float16) folded in.

    Args:
      precision: the `--precision` value.
      mixed_precision: the `--mixed_precision` value.
      precision_given: `--precision` was set explicitly (then even float32 conflicts with
        `--mixed_precision`; otherwise float32 is its default and gives way).

    Raises:
      ValueError: the two flags ask for different precisions.
    """
    if not mixed_precision or precision == "mixed_float16":
        return "mixed_float16" if mixed_precision else precision
    if precision == "float32" and not precision_given:
        return "mixed_float16"
    raise ValueError(f"--mixed_precision (the old name of --precision=mixed_float16) "
                     f"conflicts with --precision={precision}; give one of them")


def cpu_flags(cpuinfo_text: str) -> set[str]:
    """The feature flags of a `/proc/cpuinfo` text (x86 `flags`, ARM `Features` lines)."""
    flags = set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def choose_precision(cpuinfo_text: str, gpus: list[dict]) -> tuple[str, str]:
    """`--precision=auto`'s choice for this hardware, and why.

    Args:
      cpuinfo_text: the text of /proc/cpuinfo ("" where there is none).
      gpus: one dict per GPU as `tf.config.experimental.get_device_details` returns it
        (`compute_capability`: (major, minor); may be absent).

    Returns:
      (precision, reason): one of float32 / mixed_bfloat16 / mixed_float16, and a
      sentence naming the evidence.
    """
    if gpus:
        capabilities = [tuple(g.get("compute_capability") or ()) for g in gpus]
        names = ", ".join(str(g.get("device_name", "GPU")) for g in gpus)
        if any(not c for c in capabilities):
            return "float32", f"GPU compute capability unknown ({names})"
        lowest = min(capabilities)
        shown = f"{lowest[0]}.{lowest[1] if len(lowest) > 1 else 0}"
        if lowest >= BF16_GPU_CAPABILITY:
            return "mixed_bfloat16", f"GPU compute capability {shown} >= 8.0 ({names})"
        return "mixed_float16", f"GPU compute capability {shown} < 8.0 ({names}): float16 " \
                                "tensor cores, no fast bfloat16"
    present = sorted(cpu_flags(cpuinfo_text) & set(BF16_CPU_FLAGS))
    if present:
        return "mixed_bfloat16", f"CPU flags {', '.join(present)}: native bfloat16"
    return "float32", ("no GPU and no CPU flag amx_bf16 / avx512_bf16: bfloat16 would be "
                       "emulated, slower than float32")


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    """The CPU description text, "" where the file does not exist (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def vector_cpu_flags(cpuinfo_text: str) -> list[str]:
    """The CPU's AVX2 / AVX-512 / AMX flags, sorted (for benchmark records)."""
    return sorted(f for f in cpu_flags(cpuinfo_text)
                  if re.fullmatch(r"amx_\w+|avx512_bf16|avx512_fp16|avx512f|avx2", f))


def local_gpu_details() -> list[dict]:
    """`get_device_details` of every visible physical GPU."""
    import tensorflow as tf  # noqa: PLC0415 (keep the pure functions importable light)

    return [tf.config.experimental.get_device_details(gpu)
            for gpu in tf.config.list_physical_devices("GPU")]


def resolve_precision(precision: str) -> tuple[str, str]:
    """A `--precision` value -> (Keras policy name, reason); `auto` asks the hardware."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return choose_precision(read_cpuinfo(), local_gpu_details())
    return precision, "as requested"


@contextlib.contextmanager
def precision_policy(precision: str):
    """Sets Keras' global dtype policy for `precision` (resolving `auto`, logged) and
    restores the previous policy on exit. Layers built inside keep the policy.

    Yields:
      the policy name in force.
    """
    import keras  # noqa: PLC0415
    from absl import logging  # noqa: PLC0415

    name, reason = resolve_precision(precision)
    logging.info("precision %s%s (%s)", name, " (auto)" if precision == "auto" else "", reason)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)
