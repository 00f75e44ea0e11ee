#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one run of at most 8 minutes on one H200:
#   1. pretraining step, ViT-S/16 and ViT-B/16, batch 64, bf16: ours, DINOv2-dagger (field off, DINOv2's masking),
#      the same-masking control and a bare forward+backward: step time, images/s, MFU, peak memory
#      (benchmarks/pretrain_step.py --memory inprocess);
#   2. the data pipeline: images/s per core on the CPU, the device stage's cost on the GPU, and a DataLoader with
#      16 workers (crops.photometric_on=device) against the step rate of 1. (benchmarks/data_pipeline.py);
#   3. ViTDet ViT-B at 1024 px: SDPA against detectron2's explicit attention, memory and time
#      (benchmarks/vitdet_attention.py; skipped with a message when detectron2 is not importable).
#
#   benchmarks/gpu_suite.sh [--smoke] [--out DIR]
#
# --smoke: tiny sizes on the CPU, a few seconds per part: what tests/test_benchmarks.py runs.
# Every part writes DIR/<part>.json and DIR/<part>.log (default DIR: outputs/gpu_suite); a part that fails or
# overruns its time limit is reported and the suite goes on. Exit status: the number of failed parts.
#
# The GPU machine has torch, torchvision and timm but reaches no package registry. What else the scripts import
# (omegaconf and antlr4 for the configs, fvcore and iopath for FLOPs, detectron2 for part 3) is carried as wheels:
# on a machine with the registry,
#     python -m pip wheel -w wheels omegaconf fvcore iopath   # pure Python; builds the sdist-only ones (fvcore, antlr4)
#     python -m pip wheel -w wheels --no-deps --no-build-isolation "sal-detectron2==$DETECTRON2_PYPI_VERSION"
# (requirements/pins.env; built against the GPU machine's torch and CUDA, e.g. in docker/'s image), then copy wheels/ into the
# repository root (run's carry: wheels). Wheels of packages the machine already has (torch, numpy) may be deleted. When a
# wheels/ folder is present, this script installs from it first, offline:
#     python -m pip install --no-index --find-links wheels <every wheel in wheels/>
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
OUT=outputs/gpu_suite
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--smoke] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
  echo "== installing the carried wheels (offline)"
  "$PY" -m pip install --quiet --no-index --find-links wheels wheels/*.whl || echo "warning: wheel install failed"
fi

"$PY" - <<'EOF'
import torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"== torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}")
EOF

FAILED=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to DIR/NAME.log
  local name="$1" limit="$2"; shift 2
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  if [ $rc -ne 0 ]; then
    echo "!! $name failed (exit $rc) after $((SECONDS - t0)) s; log: $OUT/$name.log"
    FAILED=$((FAILED + 1))
  else
    echo "-- $name: $((SECONDS - t0)) s"
  fi
}

if [ $SMOKE -eq 1 ]; then
  part pretrain_step 240 "$PY" benchmarks/pretrain_step.py --sizes tiny --batch 2 --steps 1 --memory inprocess \
    --json "$OUT/pretrain_step.json"
  part data_pipeline 240 "$PY" benchmarks/data_pipeline.py --tiny --images 4 --size 120x90 --batch 2 --rounds 1 \
    --device-batch 4 --loader-workers 2 --loader-batches 2 --json "$OUT/data_pipeline.json"
  VITDET=(--device cpu --size 64 --repeats 1 --threads 1 --variants d2,sdpa)
  VITDET_LIMIT=240
else
  part pretrain_step 270 "$PY" benchmarks/pretrain_step.py --sizes vits16,vitb16 --batch 64 --steps 10 \
    --memory inprocess --device cuda --json "$OUT/pretrain_step.json"
  part data_pipeline 120 "$PY" benchmarks/data_pipeline.py --images 192 --batch 16 --rounds 2 --device-batch 64 \
    --loader-workers 16 --loader-batches 24 --json "$OUT/data_pipeline.json"
  VITDET=(--device cuda --size 1024 --repeats 3)
  VITDET_LIMIT=90
fi

if "$PY" -c "import detectron2" 2>/dev/null; then
  part vitdet_attention "$VITDET_LIMIT" "$PY" benchmarks/vitdet_attention.py "${VITDET[@]}" \
    --json "$OUT/vitdet_attention.json"
else
  echo "== vitdet_attention skipped: detectron2 is not importable (carry its wheel in wheels/, see the header)"
fi

"$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, f"{name}.json")
    return json.load(open(path)) if os.path.exists(path) else None
step, data = load("pretrain_step"), load("data_pipeline")
print("== summary")
if step:
    for size, t in step["sizes"].items():
        for v, r in t["variants"].items():
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            print(f"{size:7s} {v:15s} step {r['step_s']:.4f} s  {r['images_per_s']:8.1f} img/s  MFU {mfu:>6s}  "
                  f"peak {r['peak_bytes'] / 2**30:.2f} GiB")
if data and "loader" in data:
    rate = data["loader"]["images_per_s"]
    print(f"data: DataLoader with {data['loader']['workers']} workers, device path: {rate:.0f} img/s")
    if step:
        for size, t in step["sizes"].items():
            need = t["variants"]["ours"]["images_per_s"]
            print(f"  {size}: training step consumes {need:.0f} img/s -> loader/step = {rate / need:.2f}")
EOF
echo "== done: $FAILED part(s) failed; results in $OUT"
exit $FAILED
