"""`--precision`: auto's hardware rule (mocked CPU flags and GPU lists) and the policy scope."""

import keras
import pytest

from scdnn_tf.core.precision import (PRECISIONS, choose_precision, cpu_flags, precision_policy,
                                resolve_precision, vector_cpu_flags)

# Abridged /proc/cpuinfo texts of three machines (two processors each, as on real hosts).
AMD_AVX2 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
            "processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n")
XEON_AMX = ("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
            "processor\t: 1\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
COOPER_LAKE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_parse_x86_and_arm():
    assert {"avx2", "fma"} <= cpu_flags(AMD_AVX2) and "amx_bf16" not in cpu_flags(AMD_AVX2)
    assert "amx_bf16" in cpu_flags(XEON_AMX)
    assert "bf16" in cpu_flags(ARM)
    assert cpu_flags("") == set()
    assert vector_cpu_flags(XEON_AMX) == ["amx_bf16", "amx_int8", "amx_tile", "avx2",
                                          "avx512_bf16", "avx512f"]


@pytest.mark.parametrize("cpuinfo, expected", [
    (XEON_AMX, "mixed_bfloat16"), (COOPER_LAKE, "mixed_bfloat16"),
    (AMD_AVX2, "float32"), (ARM, "float32"), ("", "float32")])
def test_auto_on_cpus(cpuinfo, expected):
    precision, reason = choose_precision(cpuinfo, [])
    assert precision == expected
    if expected == "mixed_bfloat16":
        assert "bf16" in reason
    else:
        assert "emulated" in reason


@pytest.mark.parametrize("capabilities, expected", [
    ([(8, 0)], "mixed_bfloat16"), ([(9, 0), (8, 6)], "mixed_bfloat16"),
    ([(7, 5)], "mixed_float16"), ([(8, 0), (7, 0)], "mixed_float16"),  # the slowest decides
    ([(6, 1)], "mixed_float16"), ([None], "float32")])
def test_auto_on_gpus_whatever_the_cpu(capabilities, expected):
    gpus = [{"device_name": f"GPU{i}", **({"compute_capability": c} if c else {})}
            for i, c in enumerate(capabilities)]
    for cpuinfo in (AMD_AVX2, XEON_AMX):
        precision, reason = choose_precision(cpuinfo, gpus)
        assert precision == expected
        assert "GPU0" in reason


def test_explicit_precisions_pass_through_and_bad_ones_are_named():
    for name in PRECISIONS[:-1]:
        assert resolve_precision(name) == (name, "as requested")
    with pytest.raises(ValueError, match=r"--precision='bf16' must be one of"):
        resolve_precision("bf16")


def test_auto_on_this_machine_is_a_valid_choice():
    name, reason = resolve_precision("auto")  # whatever the host: a policy and a reason
    assert name in PRECISIONS[:-1] and reason


def test_policy_scope_restores_the_previous_policy():
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision_policy("mixed_bfloat16") as name:
        assert name == "mixed_bfloat16"
        layer = keras.layers.Dense(2)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    with pytest.raises(RuntimeError):
        with precision_policy("mixed_float16"):
            raise RuntimeError("restored even on errors")
    assert keras.mixed_precision.global_policy().name == "float32"
