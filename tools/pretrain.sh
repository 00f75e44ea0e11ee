#!/usr/bin/env bash
# Pretrain a ViT.  tools/pretrain.sh [CONFIG.yaml ...] [key=value ...]
#
# With no argument: the embedded default (configs/pretrain/tiny_demo.yaml) on generated toy images, on CPU,
# writing outputs/demo/ and outputs/demo/backbone.pth.
# Processes: GPUS per node (default: all visible GPUs, 1 on CPU), NNODES (1), NODE_RANK (0),
# MASTER_ADDR (127.0.0.1), MASTER_PORT (29500). Under SLURM (one task per node, e.g. `srun tools/pretrain.sh ...`)
# NNODES, NODE_RANK and MASTER_ADDR are taken from SLURM_NNODES, SLURM_NODEID and the job's first host.
# A run resumes from the newest checkpoint in train.output_dir; SIGTERM/SIGINT write a checkpoint first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ] || [ -n "${INSTALL_ALWAYS:-}" ]; then
  tools/install.sh
fi
PY="${PYTHON:-$ROOT/.venv/bin/python}"

if [ "$#" -eq 0 ]; then
  echo "[pretrain] no config given: running the embedded default (configs/pretrain/tiny_demo.yaml)"
  "$PY" tools/make_toy_data.py --out data/toy --what all --seed 0
  set -- configs/pretrain/tiny_demo.yaml
fi

if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_NNODES:-}" ]; then
  NNODES="${NNODES:-$SLURM_NNODES}"
  NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
  if [ -z "${MASTER_ADDR:-}" ] && command -v scontrol >/dev/null; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  fi
fi
if [ -z "${GPUS:-}" ]; then
  GPUS=$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

if [ "$GPUS" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  # torchrun exits 1 after SIGTERM even when every process wrote its checkpoint and exited 143: this script waits
  # for it and exits 143 itself, as a single process does. A signal sent to this script alone goes on to torchrun.
  # pretrain.launch is torchrun; on one node with a loopback MASTER_ADDR it binds the rendezvous store and the
  # process group's sockets to loopback only (torchrun alone listens on every interface).
  "$PY" -m pretrain.launch --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m pretrain.engine.train "$@" &
  child=$!
  stopped=""
  trap 'stopped=1; kill -TERM "$child" 2>/dev/null || true' TERM INT
  rc=0
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do
    rc=0
    wait "$child" || rc=$?
  done
  if [ -n "$stopped" ] && [ "$rc" -ne 0 ]; then
    exit 143
  fi
  exit "$rc"
fi
exec "$PY" -m pretrain.engine.train "$@"
