#!/usr/bin/env bash
# Creates .venv (unless VLPROMPT_VENV points elsewhere or one is active) and installs vlprompt into it.
# An already-installed torch is kept as it is (CUDA builds included); without one, torch 2.13.0 is
# installed (the CPU wheel on CPU-only machines set up with it) with the torchvision that pairs with it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  venv="${VLPROMPT_VENV:-.venv}"
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
fi

pip_install() { python -m pip install --quiet --disable-pip-version-check "$@"; }

if ! python -c "import torch" 2>/dev/null; then
  pip_install "torch==2.13.0" "torchvision==0.28.0"
fi
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  # torchvision must pair with the installed torch, or pip would replace torch: torch 2.N ↔ torchvision 0.(N+15).
  tv=$(python -c "import torch; major, minor = torch.__version__.split('+')[0].split('.')[:2]; print(f'0.{int(minor) + 15}.*' if major == '2' else '')")
  pip_install "torchvision==${tv:?cannot pick a torchvision for this torch; install the matching one first}"
fi
# clip-anytorch imports pkg_resources, which setuptools 82 removed (vlprompt also carries a stand-in).
pip_install "setuptools>=77.0.3,<82"
pip_install --no-build-isolation -e ".[test]"
python -c "import vlprompt, vlprompt.trainers, vlprompt.datasets, torchvision; print('vlprompt', vlprompt.__version__, 'installed with torch', __import__('torch').__version__)"
