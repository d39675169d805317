#!/usr/bin/env bash
# Create (or reuse) Rosetta's Python environment: PyTorch 2.13.0 (the libtorch tch 0.26 links against) and HF
# transformers (the numerical reference and GGUF converter). Idempotent: the venv lives under
# $ROSETTA_HOME (default ~/.cache/rosetta) and is reused while python-requirements.txt is unchanged.
# Also points the repository's .libtorch symlink at the venv's torch package; .cargo/config.toml sets
# LIBTORCH to it, so plain `cargo build/test/run` works without activating anything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=${ROSETTA_HOME:-$HOME/.cache/rosetta}
venv=$home/venv
req=$root/python-requirements.txt
stamp=$venv/.rosetta-requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
python=${PYTHON:-python3}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "[setup] python env up to date: $venv"
else
  mkdir -p "$home"
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating python venv at $venv"
    "$python" -m venv "$venv"
  fi
  echo "[setup] installing $(grep -cv '^#' "$req") pinned packages (torch 2.13.0 is ~4.7 GB on first install)"
  # pipefail: a failed install fails the pipe even though grep filters the noise.
  "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar on -r "$req" \
    | { grep -v '^Requirement already satisfied' || true; } \
    || { echo "[setup] error: pip could not install $req (is the PyPI registry reachable?)" >&2; exit 1; }
  echo "$want" > "$stamp"
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
