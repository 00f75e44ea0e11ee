#!/usr/bin/env bash
# ADE20K Segmenter linear-decoder fine-tuning (paper appendix B.3): one run, seeds, or the lr x wd sweep.
#
#   tools/train_ade.sh CONFIG CKPT [--sweep] [--seeds N] [--lrs a,b,..] [--wds a,b] [--work-dir DIR]
#                      [--summary-only] [--keep-going] [key=value ...]
#
#   --sweep       weight decay {1e-2, 1e-4} x lr {8e-5, 3e-5, 1e-5, 8e-6} (--lrs / --wds override the grid)
#   --seeds N     repeat every point with seeds 0..N-1 (the paper reports the mean of 2)
#   key=value     MMEngine --cfg-options for every run (e.g. train_dataloader.num_workers=8)
#
# Each run trains in <work_dir>/lr{lr}_wd{wd}/seed{s} (default work_dir: outputs/ade20k/<config name>);
# finished runs (metrics_final.json) are skipped, interrupted ones resumed; <work_dir>/summary.{md,csv} give
# mean ± std over seeds per point and mark the best point.
#
# Environment: GPUS (per node, default 1), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500): torchrun when GPUS > 1 or NNODES > 1, else plain python. ADE20K_ROOT: dataset root
# (default data/ade/ADEChallengeData2016). Total batch is 16 whatever the number of GPUs (16 // world size
# per GPU). Examples:
#   GPUS=8 tools/train_ade.sh configs/ade20k/segmenter_linear_vit_b_160k.py ours_vitb_mmseg.pth --sweep --seeds 2
#   tools/train_ade.sh configs/ade20k/segmenter_linear_vit_tiny_toy.py toy_mmseg.pth   # data/toy/ade or TOY_ADE_ROOT
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "[train_ade] $PY not found: creating the environment with tools/install.sh" >&2
  "$ROOT/tools/install.sh"
  PY="$ROOT/.venv/bin/python"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$#" -lt 2 ]; then
  exec "$PY" -m transfer.segmenter.sweep -h
fi
exec "$PY" -m transfer.segmenter.sweep "$@"
