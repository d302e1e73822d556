"""Test setup: two logical CPU devices (for MirroredStrategy tests) and shared data paths."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Must happen before TF initializes its devices: multi-replica code is tested on CPU
# with two logical devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
COCO_REAL = os.path.join(SHARED_DATA, "coco_real")


@pytest.fixture
def coco_real():
    """Path to ../shared/data/coco_real; skips the test when the folder is absent."""
    if not os.path.isdir(COCO_REAL):
        pytest.skip(f"real COCO data not found at {COCO_REAL}")
    return COCO_REAL


def pytest_collection_modifyitems(items):
    """Marks the tests that use the real photos `shared_data` (select with -m)."""
    for item in items:
        if "coco_real" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)
