#!/usr/bin/env bash
# The main job, one command: install what this machine lacks, then run the whole pipeline on
# Fashion-MNIST offline (demo.py; about 7 minutes on 2 CPU cores, see the README). Arguments go to demo.py
# (--seed N, --tiny, --force, --out DIR). `bash demo.sh --check-only` lists the missing Python requirements and
# installs nothing.
set -euo pipefail
cd "$(dirname "$0")"

# Every distribution requirements.txt and requirements-dev.txt name (what the demo and the tests import,
# pytest-xdist included), checked by its installed metadata: prints the missing ones, exits 1 if any.
missing_requirements() {
  python3 - <<'PY'
import importlib.metadata as md, re, sys
missing = []
for name in ('requirements.txt', 'requirements-dev.txt'):
    for line in open(name):
        spec = line.split('#')[0].strip()
        if spec and not spec.startswith('-'):
            dist = re.split(r'[<>=!~;\[ ]', spec)[0]
            try:
                md.version(dist)
            except md.PackageNotFoundError:
                missing.append(dist)
print(' '.join(missing))
sys.exit(1 if missing else 0)
PY
}

if [ "${1:-}" = "--check-only" ]; then missing_requirements; exit $?; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! missing=$(missing_requirements); then
  echo "== installing the Python requirements (missing: $missing)"
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
