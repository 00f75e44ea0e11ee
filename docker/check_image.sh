#!/usr/bin/env bash
# Sanity checks of the GPU image (docker/Dockerfile runs the first form at the end of its build).
#
#   docker/check_image.sh          no GPU needed: versions agree with requirements/pins.env, nvcc's CUDA equals
#                                  torch's, mmcv and detectron2 ops were compiled with CUDA for every
#                                  architecture in TORCH_CUDA_ARCH_LIST
#   docker/check_image.sh --gpu    also runs CUDA kernels of torch, mmcv and detectron2 on the first GPU
#                                  (docker run --rm --gpus all IMAGE docker/check_image.sh --gpu)
#
# Exit status 0 when every check passes; each failure is printed as "[check] FAIL ...".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source requirements/pins.env

GPU=0
case "${1:-}" in
  "") ;;
  --gpu) GPU=1 ;;
  -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "check_image.sh: unknown argument '$1' (only --gpu)" >&2; exit 2 ;;
esac

PY="${VENV:-$ROOT/.venv}/bin/python"
[ -x "$PY" ] || { echo "[check] FAIL no Python at $PY (set VENV)" >&2; exit 1; }

NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
command -v "$NVCC" >/dev/null || NVCC="$(command -v nvcc || true)"
[ -n "$NVCC" ] || { echo "[check] FAIL nvcc not found (a CUDA devel base image is required)" >&2; exit 1; }
NVCC_CUDA="$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"

CUOBJDUMP="$(dirname "$NVCC")/cuobjdump"
[ -x "$CUOBJDUMP" ] || CUOBJDUMP=""

GPU="$GPU" NVCC_CUDA="$NVCC_CUDA" CUOBJDUMP="$CUOBJDUMP" \
PIN_TORCH="${TORCH_VERSION}" PIN_TORCHVISION="${TORCHVISION_VERSION}" PIN_TORCH_CUDA="${TORCH_CUDA:-}" \
PIN_MMCV="${MMCV_VERSION}" PIN_MMSEG="${MMSEG_VERSION}" PIN_MMENGINE="${MMENGINE_VERSION}" PIN_TIMM="${TIMM_VERSION}" \
"$PY" - <<'PYEOF'
import os
import re
import subprocess
import sys

failures = []


def check(ok, what):
    print(f"[check] {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def major_minor(text):
    m = re.search(r"(\d+)\.(\d+)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


env = os.environ
import torch  # noqa: E402
import torchvision  # noqa: E402
import timm  # noqa: E402
import mmcv  # noqa: E402
import mmengine  # noqa: E402
import mmseg  # noqa: E402
import detectron2  # noqa: E402

for name, mod, pin in [("torch", torch, env["PIN_TORCH"]), ("torchvision", torchvision, env["PIN_TORCHVISION"]),
                       ("timm", timm, env["PIN_TIMM"]), ("mmcv", mmcv, env["PIN_MMCV"]),
                       ("mmengine", mmengine, env["PIN_MMENGINE"]), ("mmsegmentation", mmseg, env["PIN_MMSEG"])]:
    have = mod.__version__.split("+")[0]
    check(have == pin, f"{name} {mod.__version__} (pins.env: {pin})")

torch_cuda = torch.version.cuda
check(torch_cuda is not None, f"torch is a CUDA build (torch.version.cuda = {torch_cuda})")
pin_cuda = env.get("PIN_TORCH_CUDA")
if pin_cuda:
    check(major_minor(torch_cuda) == pin_cuda, f"torch's CUDA {torch_cuda} equals pins.env TORCH_CUDA={pin_cuda}")
else:
    check(False, "pins.env has TORCH_CUDA (the CUDA version of the pinned torch wheel)")
check(env["NVCC_CUDA"] == major_minor(torch_cuda), f"nvcc's CUDA {env['NVCC_CUDA']} equals torch's {torch_cuda}")

from mmcv.ops import get_compiling_cuda_version  # noqa: E402

mmcv_cuda = get_compiling_cuda_version()
check(major_minor(mmcv_cuda) == major_minor(torch_cuda), f"mmcv ops compiled with CUDA ({mmcv_cuda})")
try:
    from detectron2 import _C as d2c

    d2_cuda = d2c.get_cuda_version()
except ImportError as exc:
    d2_cuda = f"no detectron2._C ({exc})"
check(major_minor(d2_cuda) == major_minor(torch_cuda), f"detectron2 ops compiled with CUDA ({d2_cuda})")

# Which GPU architectures the compiled ops carry (SASS per sm_XY), against TORCH_CUDA_ARCH_LIST.
wanted = sorted({"sm_" + a.split("+")[0].replace(".", "") for a in
                 re.split(r"[;\s]+", env.get("TORCH_CUDA_ARCH_LIST", "").strip()) if a})
if env.get("CUOBJDUMP") and wanted:
    import importlib.util

    for label, mod_name in [("mmcv._ext", "mmcv._ext"), ("detectron2._C", "detectron2._C")]:
        spec = importlib.util.find_spec(mod_name)
        if spec is None or not spec.origin:
            check(False, f"{label} found")
            continue
        out = subprocess.run([env["CUOBJDUMP"], "--list-elf", spec.origin], capture_output=True, text=True).stdout
        have = sorted(set(re.findall(r"sm_\d+a?", out)))
        missing = [a for a in wanted if a not in have]
        check(not missing, f"{label} has code for {', '.join(wanted)} (found: {', '.join(have) or 'none'})")
else:
    print("[check] skip  architecture list (no cuobjdump or TORCH_CUDA_ARCH_LIST unset)")

if env["GPU"] == "1":
    ok = torch.cuda.is_available()
    check(ok, "a GPU is visible (docker run --gpus all ...)")
    if ok:
        dev = torch.device("cuda", 0)
        cap = torch.cuda.get_device_capability(dev)
        sm = f"sm_{cap[0]}{cap[1]}"
        print(f"[check]      GPU 0: {torch.cuda.get_device_name(dev)} ({sm}), driver CUDA via torch {torch_cuda}")
        check(not wanted or sm in wanted,
              f"{sm} is in TORCH_CUDA_ARCH_LIST (else rebuild with --build-arg DOCKER_CUDA_ARCH_LIST=...)")
        q = torch.randn(2, 4, 256, 64, device=dev, dtype=torch.bfloat16)
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        check(bool(torch.isfinite(a).all()), "torch SDPA (bf16) runs")
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32, device=dev)
        scores = torch.tensor([0.9, 0.8, 0.7], device=dev)
        from mmcv.ops import nms as mmcv_nms

        _, keep = mmcv_nms(boxes, scores, 0.5)
        check(keep.tolist() == [0, 2], f"mmcv.ops.nms CUDA kernel (kept {keep.tolist()})")
        from detectron2.layers import nms_rotated

        rboxes = torch.tensor([[5, 5, 10, 10, 0], [6, 6, 10, 10, 0], [55, 55, 10, 10, 0]], dtype=torch.float32,
                              device=dev)
        keep2 = nms_rotated(rboxes, scores, 0.5)
        check(keep2.tolist() == [0, 2], f"detectron2 nms_rotated CUDA kernel (kept {keep2.tolist()})")
        n = torch.cuda.device_count()
        if n > 1:
            print(f"[check]      {n} GPUs visible")

if failures:
    print(f"[check] {len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("[check] all checks passed")
PYEOF
