#!/bin/sh
# Builds the TF Model Garden venv used by peer_faster_rcnn.py and convert_coco.py.
#   sh benchmarks/make_mg_venv.sh [VENV_DIR]        (default ~/mg_venv; never inside the repo)
# tf-models-official 2.20 pins TF 2.20; it runs on TF 2.21 when installed with --no-deps
# plus its runtime dependencies. The full `tensorflow` wheel (not tensorflow-cpu): tf-keras
# pulls it anyway, and two overlapping TF wheels in one venv break imports.
set -eu
VENV=${1:-$HOME/mg_venv}
PY=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q tensorflow==2.21.0
"$VENV/bin/pip" install -q tf-keras==2.21.0 pycocotools absl-py pillow pyyaml gin-config six \
    scipy opencv-python-headless matplotlib psutil tensorflow-hub tensorflow-datasets
"$VENV/bin/pip" install -q --no-deps tf-models-official==2.20.0
"$VENV/bin/python" -c "import official.vision.configs.maskrcnn, tensorflow as tf; print('Model Garden OK, TF', tf.__version__)"
