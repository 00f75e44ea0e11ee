#!/usr/bin/env bash
# ViTDet Mask R-CNN on a converted backbone (COCO protocol of the paper, appendix B.2).
#
#   tools/train_vitdet.sh CONFIG CKPT [--resume] [--eval-only] [key=value ...]
#
#   CONFIG  configs/vitdet/*.py (LazyConfig), e.g. configs/vitdet/mask_rcnn_vit_b_12ep.py
#   CKPT    detectron2-target checkpoint from tools/convert_ckpt.py (or, with --eval-only, a trained model)
#
# Environment (same conventions as tools/pretrain.sh):
#   GPUS         processes per node (default: number of visible GPUs, 1 on CPU)
#   NNODES       number of nodes (1)            NODE_RANK   this node's rank (0)
#   MASTER_ADDR  rank-0 node address (127.0.0.1) MASTER_PORT rendezvous port (29500)
#   OUTPUT_DIR   output folder (default: outputs/vitdet/<config name>)
#   DETECTRON2_DATASETS  folder holding coco/ (COCO configs); TOY_COCO_ROOT  toy COCO set (toy config)
#
# Example (8 GPUs, one node):
#   GPUS=8 tools/train_vitdet.sh configs/vitdet/mask_rcnn_vit_b_12ep.py converted_d2.pth
# Two nodes: run on each with NNODES=2 NODE_RANK=0|1 MASTER_ADDR=<node0> MASTER_PORT=29500.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac
if [ $# -lt 2 ]; then
  usage >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$1"
CKPT="$2"
shift 2

[ -f "$CONFIG" ] || { echo "train_vitdet.sh: config not found: $CONFIG" >&2; exit 2; }
[ -f "$CKPT" ] || { echo "train_vitdet.sh: checkpoint not found: $CKPT" >&2; exit 2; }

FLAGS=()
OPTS=()
for a in "$@"; do
  case "$a" in
    --resume | --eval-only) FLAGS+=("$a") ;;
    -*) echo "train_vitdet.sh: unknown flag $a (only --resume and --eval-only; the rest are key=value)" >&2; exit 2 ;;
    *=*) OPTS+=("$a") ;;
    *) echo "train_vitdet.sh: expected key=value, got '$a'" >&2; exit 2 ;;
  esac
done

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "[train_vitdet] no .venv: running tools/install.sh first" >&2
  "$ROOT/tools/install.sh" >/dev/null
fi
PY="$ROOT/.venv/bin/python"

if [ -z "${GPUS:-}" ]; then
  GPUS=$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))' 2>/dev/null || echo 1)
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

if [ "$NNODES" -gt 1 ]; then
  DIST_URL="tcp://${MASTER_ADDR}:${MASTER_PORT}"
else
  DIST_URL="auto"
fi
OUT_ARGS=()
[ -n "${OUTPUT_DIR:-}" ] && OUT_ARGS=(--output "$OUTPUT_DIR")

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
set -x
exec "$PY" -m transfer.vitdet.train --config-file "$CONFIG" --init "$CKPT" \
  --num-gpus "$GPUS" --num-machines "$NNODES" --machine-rank "$NODE_RANK" --dist-url "$DIST_URL" \
  ${OUT_ARGS[@]+"${OUT_ARGS[@]}"} ${FLAGS[@]+"${FLAGS[@]}"} ${OPTS[@]+"${OPTS[@]}"}
