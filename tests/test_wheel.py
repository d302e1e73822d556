"""The built wheel, installed (not editable) in a fresh virtual environment, works from an
empty folder: packaged configs, the converters, train, evaluate, export and predict."""

import glob
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.spawns]


def _run(args, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CONFIG")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), REPO_ROOT], cwd=tmp_path)
    wheels = glob.glob(str(dist / "scdnn_tf-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    bin_dir = venv / "bin"
    _run([str(bin_dir / "pip"), "install", "-q", f"{wheels[0]}[cpu]"], cwd=tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    py = str(bin_dir / "python")
    # Imported from site-packages, not from the checkout.
    location = _run([py, "-c", "import scdnn_tf; print(scdnn_tf.__file__)"], cwd=work)
    assert str(venv) in location and REPO_ROOT not in location, location
    _run([str(bin_dir / "scdnn-make-shapes"), "--output_dir=data", "--num_train=8",
          "--num_val=4", "--image_size=64"], cwd=work)
    _run([str(bin_dir / "scdnn-inspect-tfrecord"), "data/train-*"], cwd=work)
    train = [str(bin_dir / "scdnn-train"), "--config=demo", "--train_pattern=data/train-*",
             "--eval_pattern=data/val-*", "--label_map=data/label_map.txt", "--demo_data_dir=",
             "--model_dir=run", "--image_size=64", "--anchor_sizes=8,16,32,64",
             "--global_batch_size=4", "--train_steps=2", "--warmup_steps=0", "--eval_every=2",
             "--checkpoint_every=2", "--log_every=1", "--num_eval_images=1"]
    _run(train, cwd=work)
    assert os.path.exists(work / "run" / "ckpt-2.index")
    _run([str(bin_dir / "scdnn-evaluate"), "--model_dir=run"], cwd=work)
    assert "mAP" in json.loads((work / "run" / "metrics.json").read_text())
    _run([str(bin_dir / "scdnn-export"), "--model_dir=run", "--export_dir=served"], cwd=work)
    _run([py, "-c", "from PIL import Image; Image.new('RGB', (64, 48), (30, 90, 200))"
          ".save('photo.png')"], cwd=work)
    out = _run([str(bin_dir / "scdnn-predict"), "--saved_model=served/1", "photo.png"],
               cwd=work)
    assert out.startswith("photo.png: "), out
