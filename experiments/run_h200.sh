#!/usr/bin/env bash
# The whole loop on one H200 (issue 9): training-step time at 32K tokens (dense vs SLA), a GPU
# sweep of experiments/topk.yaml (topk 0.05/0.1/0.2 + the full-attention control, medium preset,
# 16K tokens per sample, Triton kernels on), then `infer` on its best trial. GPU utilisation is
# sampled every second throughout. Results land in OUTDIR (docs/benchmarks.md quotes them).
#
#   experiments/run_h200.sh OUTDIR [sweep steps] [bench layers]
#
# Run from the repository root, with sla-sweep importable (pip install -e . or PYTHONPATH).
set -uo pipefail
out=${1:?usage: experiments/run_h200.sh OUTDIR [sweep steps] [bench layers]}
steps=${2:-40}
layers=${3:-6}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled SLA_SWEEP_CACHE="$out/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$out/gpu_util.csv" &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
stamp() { echo "[run_h200] $(date +%T) $*" | tee -a "$out/phases.log"; }

stamp "bench_step start"
timeout "${BENCH_TIMEOUT:-170}" python -m orchestrator.bench_step --preset wan-1.3b --layers "$layers" --topk 0.05 0.1 0.2 \
    --steps 2 --out "$out/step_32k.json" 2>&1 | tee "$out/step_32k.log"
stamp "sweep start"
timeout "${SWEEP_TIMEOUT:-260}" python -m orchestrator run experiments/topk.yaml --set profile=gpu \
    --set 'sla.topk={grid: [0.05, 0.1, 0.2]}' --set train.steps="$steps" \
    --set train.eval_every=20 --set train.checkpoint_every=20 --set train.base_steps=60 \
    --set resources.gpus_per_worker=0.25 --set "storage.results_dir=$out/sla_runs" 2>&1 | tee "$out/sweep.log"
stamp "sweep end"
sweep=$(ls -d "$out"/sla_runs/topk-* 2>/dev/null | tail -1)
if [ -n "$sweep" ]; then
    cp "$sweep"/results.csv "$sweep"/trials.json "$sweep"/timings.json "$out"/ 2>/dev/null
    python -m orchestrator best "$sweep" 2>&1 | tee "$out/best.log"
    stamp "infer start"
    timeout "${INFER_TIMEOUT:-90}" python -m orchestrator infer "$sweep" --device cuda --out "$out/samples" 2>&1 | tee "$out/infer.log"
    stamp "infer end"
fi
