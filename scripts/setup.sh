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
# Bytecode once, here: machines that set PYTHONDONTWRITEBYTECODE=1 (this one, CI) never cache it, so every
# process -- each Ray worker of every job -- recompiled torch and Ray from source (issue 14: the Ray
# start-up chain is a dozen such processes). Python still reads .pyc files under that variable.
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
.venv/bin/python -m compileall -q -j 0 "$SITE" grounding rayjobs >/dev/null 2>&1 || true
.venv/bin/python -c "import torch, torchvision, ray, pydicom, gensim; print('setup ok: torch', torch.__version__, 'ray', ray.__version__)"
