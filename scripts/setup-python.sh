#!/usr/bin/env bash
# Create (or reuse) Rosetta's Python environment: PyTorch 2.13.0 (the libtorch tch 0.26 links against) and HF
# transformers (the numerical reference and GGUF converter). Idempotent: the venv lives under
# $ROSETTA_HOME (default ~/.cache/rosetta) and is reused while python-requirements.txt and python-pip.txt
# are unchanged. pip itself is pinned (python-pip.txt) and upgraded first: the system Python may bundle an old one.
# Also points the repository's .libtorch symlink at the venv's torch package; .cargo/config.toml sets
# LIBTORCH to it, so plain `cargo build/test/run` works without activating anything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=${ROSETTA_HOME:-$HOME/.cache/rosetta}
venv=$home/venv
# ROSETTA_REQUIREMENTS replaces the package list (tests/python/test_setup.py sets up a venv with a small one).
req=${ROSETTA_REQUIREMENTS:-$root/python-requirements.txt}
pipreq=$root/python-pip.txt
stamp=$venv/.rosetta-requirements.sha256
# The stamp covers both files: changing the pinned pip or any package re-runs the install.
want=$(cat "$pipreq" "$req" | sha256sum | cut -d' ' -f1)
python=${PYTHON:-python3}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "[setup] python env up to date: $venv"
else
  mkdir -p "$home"
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating python venv at $venv"
    "$python" -m venv "$venv"
  fi
  # The venv starts with whatever pip the system Python bundles (23.2.1 on Debian's Python 3.11.7), which lacks
  # options Rosetta's scripts use (`pip download --progress-bar raw` needs pip >= 24.1): pin pip first.
  pip_pin=$(grep -v '^#' "$pipreq" | grep -m1 '^pip==')
  have_pip=$("$venv/bin/python" -m pip --version | cut -d' ' -f2)
  if [ "pip==$have_pip" != "$pip_pin" ]; then
    echo "[setup] pip $have_pip in the venv -> ${pip_pin#pip==} (pinned in python-pip.txt)"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$pipreq" \
      || { echo "[setup] error: pip could not install $pip_pin from $pipreq (is the PyPI registry reachable?)" >&2; exit 1; }
  fi
  echo "[setup] installing $(grep -cv '^#' "$req") pinned packages (torch 2.13.0 is ~4.7 GB on first install)"
  # pipefail: a failed install fails the pipe even though grep filters the noise.
  "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar on -r "$req" \
    | { grep -v '^Requirement already satisfied' || true; } \
    || { echo "[setup] error: pip could not install $req (is the PyPI registry reachable?)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

if ! grep -q '^torch==' "$req"; then
  exit 0  # a package list without torch (tests): nothing to link
fi
torch_dir=$("$venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
if [ ! -f "$torch_dir/lib/libtorch.so" ]; then
  echo "[setup] error: $torch_dir/lib/libtorch.so missing: the torch install is broken; delete $venv and rerun" >&2
  exit 1
fi
if [ "$(readlink "$root/.libtorch" 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" "$root/.libtorch"
  echo "[setup] .libtorch -> $torch_dir"
fi
