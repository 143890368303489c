#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Idempotent; ~30 s with a warm cache.
# torch/torchvision are pinned by constraints.txt (the pair that imports together on this kind of
# machine); pyproject.toml keeps ranges that GPU clusters can satisfy.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check uv
.venv/bin/uv pip install -q --python .venv/bin/python -c constraints.txt -e '.[test,search,tracking]'
.venv/bin/python -c "import torch, torchvision, ray, pydicom, gensim; print('setup ok: torch', torch.__version__, 'ray', ray.__version__)"
