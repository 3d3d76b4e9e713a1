#!/usr/bin/env bash
# The main job, one command: install what this machine lacks, then run the whole pipeline on
# Fashion-MNIST offline (demo.py; about 10 minutes on 2 CPU cores, measured 9.4). Arguments go to demo.py
# (--tiny, --force, --out DIR).
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! python3 -c "import torch, torchvision, numpy, tqdm, tensorboard, pytest" 2>/dev/null; then
  echo "== installing the Python requirements"
  python3 -m pip install -q -r requirements-dev.txt
fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "== installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
if ! command -v dot >/dev/null; then
  echo "== installing Graphviz for the cell diagrams (optional)"
  $SUDO apt-get install -y -qq graphviz || echo "   (no Graphviz: the diagrams stay .dot text)"
fi
exec python3 demo.py "$@"
