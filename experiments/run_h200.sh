#!/usr/bin/env bash
# The whole loop on one H200 in phases, so that it fits 10-minute device calls:
#
#   experiments/run_h200.sh OUTDIR PHASE [PHASE ...]
#
#   gputests  the GPU kernel tests (tests/sla_kernel_glue/test_triton_gpu.py), GPUTESTS_SHARDS at once
#             (GPUTESTS_K: a pytest -k expression to run some of them)
#   kernels   python -m benchmarks.sla_kernels: real-size checks against the float64 reference,
#             then N 8192 and 32768 (KERNELS_N) against SDPA cuDNN/flash with peak memory
#             (KERNELS_FLAGS=--skip-check for timings only)
#   kernels-small  timings and stages at the training step's attention shape (B 1, H 12, N 32768)
#   step      python -m benchmarks.train_step: one training step of wan-1.3b-6l (32,768 tokens),
#             dense vs SLA (marginal topk 0.05/0.1/0.2, all and sparse-only at 0.05), attention's share
#             (STEP_FLAGS="--compile --profile DIR", STEP_TOPK, STEP_SLA, STEP_NAME, STEP_EXTRA: the
#             extra configs, space-separated dicts without spaces)
#   sweep     sla-sweep experiments/h200.yaml (resumes the last one when it was cut short; SWEEP_SPEC
#             and SWEEP_NAME pick another file and its name, e.g. experiments/h200-study.yaml, h200-study)
#   compare   sla-sweep compare + infer (SLA and dense) on the sweep's best trial
#
# Sweeps go to ./sla_runs (git-ignored, so a machine that is still warm finds them next call);
# each phase copies its results into OUTDIR. GPU utilisation is sampled every second throughout.
# Every phase has a time limit (*_TIMEOUT, seconds) after which it gets SIGTERM, then SIGKILL
# (15 s later; 60 s for a sweep, which shuts Ray down on SIGTERM): one pytest shard once ignored SIGTERM.
# Run from the repository root with sla-sweep importable (pip install -e . or PYTHONPATH).
set -uo pipefail
out=${1:?usage: experiments/run_h200.sh OUTDIR PHASE [PHASE ...]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SLA_SWEEP_CACHE="$PWD/sla_runs/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 >> "$out/gpu_util.csv" &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
stamp() { echo "[run_h200] $(date +%T) $*" | tee -a "$out/phases.log"; }
spec=${SWEEP_SPEC:-experiments/h200.yaml}  # the sweep and compare phases: SWEEP_SPEC, SWEEP_NAME (its name:)
last_sweep() { ls -d "sla_runs/${SWEEP_NAME:-h200}"-[0-9]* 2>/dev/null | tail -1; }
sweep_done() {  # every expected trial ended (trials.json against sweep.json)
    python - "$1" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
try:
    rows = json.loads((d / "trials.json").read_text())
    expected = json.loads((d / "sweep.json").read_text())["expected_trials"]
except (OSError, ValueError, KeyError):
    sys.exit(1)
sys.exit(0 if sum(r["status"] in ("TERMINATED", "STOPPED", "ERROR") for r in rows) >= expected else 1)
PY
}

for phase in "$@"; do
    stamp "$phase start"
    case "$phase" in
    gputests)  # GPUTESTS_SHARDS pytest processes side by side: Triton compiles on all cores
        shards=${GPUTESTS_SHARDS:-4}
        python -m pytest -q -p no:cacheprovider --collect-only tests/sla_kernel_glue/test_triton_gpu.py ${GPUTESTS_K:+-k "$GPUTESTS_K"} \
            | grep '::' > "$out/gputests_ids.txt"
        pids=()
        for i in $(seq 0 $((shards - 1))); do
            awk -v n="$shards" -v i="$i" 'NR % n == i' "$out/gputests_ids.txt" > "$out/gputests_shard$i.txt"
            timeout -k 15 "${GPUTESTS_TIMEOUT:-420}" python -m pytest -q -p no:cacheprovider \
                $(cat "$out/gputests_shard$i.txt") > "$out/gputests_shard$i.log" 2>&1 &
            pids+=($!)
        done
        wait "${pids[@]}"  # the shards only: a bare wait would also wait for the nvidia-smi sampler
        tail -n 3 "$out"/gputests_shard*.log | tee "$out/gputests.log" ;;
    kernels)
        timeout -k 15 "${KERNELS_TIMEOUT:-420}" python -m benchmarks.sla_kernels --n ${KERNELS_N:-8192 32768} --blkq 64 128 \
            ${KERNELS_FLAGS:-} --out "$out/kernels" 2>&1 | tee "$out/kernels.log" ;;
    kernels-small)  # the training step's attention shape: B 1, H 12 (Wan 1.3B) at 32,768 tokens
        timeout -k 15 "${KERNELS_TIMEOUT:-300}" python -m benchmarks.sla_kernels --n 32768 --batch 1 --heads 12 \
            --blkq 64 --topk 0.05 --scope all none --skip-check --out "$out/kernels_b1h12" 2>&1 | tee "$out/kernels_b1h12.log" ;;
    step)  # STEP_FLAGS: e.g. --compile, --profile DIR; STEP_NAME names the outputs
        name=${STEP_NAME:-step_32k}
        timeout -k 15 "${STEP_TIMEOUT:-200}" python -m benchmarks.train_step --preset wan-1.3b-6l \
            --topk ${STEP_TOPK:-0.05 0.1 0.2} --sla "${STEP_SLA:-{'linear_scope': 'marginal'\}}" \
            --extra ${STEP_EXTRA:-"{'topk':0.05,'linear_scope':'all'}" "{'topk':0.05,'linear_scope':'none'}"} \
            --steps 3 ${STEP_FLAGS:-} --out "$out/$name.json" 2>&1 | tee "$out/$name.log" ;;
    sweep)
        sweep=$(last_sweep)
        if [ -n "$sweep" ] && ! sweep_done "$sweep"; then
            timeout -k 60 "${SWEEP_TIMEOUT:-420}" python -m orchestrator resume "$sweep" 2>&1 | tee -a "$out/sweep.log"
        else
            timeout -k 60 "${SWEEP_TIMEOUT:-420}" python -m orchestrator run "$spec" ${SWEEP_SET:-} 2>&1 | tee -a "$out/sweep.log"
        fi
        sweep=$(last_sweep)
        [ -n "$sweep" ] && cp "$sweep"/results.csv "$sweep"/trials.json "$sweep"/timings.json "$sweep"/pareto.png "$out"/ 2>/dev/null
        [ -n "$sweep" ] && [ -d "$sweep/report" ] && cp -r "$sweep/report" "$out/" ;;
    compare)
        sweep=$(last_sweep)
        if [ -z "$sweep" ]; then stamp "no sweep to compare"; continue; fi
        timeout -k 15 "${COMPARE_TIMEOUT:-240}" python -m orchestrator compare "$sweep" --num-samples 4 --out "$out/compare.json" 2>&1 | tee "$out/compare.log"
        python -m orchestrator best "$sweep" 2>&1 | tee "$out/best.log"
        for attention in sla dense; do
            timeout -k 15 "${INFER_TIMEOUT:-120}" python -m orchestrator infer "$sweep" --device cuda --attention "$attention" \
                --num-samples 2 --out "$out/samples-$attention" 2>&1 | tee "$out/infer-$attention.log"
        done ;;
    *)
        stamp "unknown phase $phase (gputests, kernels, kernels-small, step, sweep, compare)"; exit 2 ;;
    esac
    stamp "$phase end"
done
