#!/usr/bin/env bash
# A shorter call: checks + table at N 8192/32768 (new code, with and without the switches), then
# the marginal dK/dV split explore if time is left. LIMIT: seconds for the whole script.
set -uo pipefail
export PYTHONUNBUFFERED=1
LIMIT=${1:-240}; T0=$SECONDS
R=/tmp/r; mkdir -p $R
left() { echo $(( LIMIT - (SECONDS - T0) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $R/gpu.txt
stamp() { echo "[lite] $(date +%T) $*" | tee -a $R/phases.log; }
stamp A
timeout -k 5 $(( $(left) - 60 )) python -m benchmarks.sla_kernels --n 8192 32768 --topk 0.05 \
  --configs all:64 all:64:custom_op marginal:128 marginal:128:nosplit marginal:64 \
  --check-cases 0 1 5 --skip-stages --out $R/new > $R/new.log 2>&1; echo "rc $?" >> $R/new.log
stamp C
[ $(left) -gt 40 ] && timeout -k 5 $(( $(left) - 15 )) python -m benchmarks.sla_kernels --n 32768 --blkq 128 64 \
  --scope marginal --explore-split --host --only-explore --out $R/explore > $R/explore.log 2>&1; echo "rc $?" >> $R/explore.log
stamp end
tar czf $OUT/s2.tgz -C $R .
cp $R/phases.log $R/new.log $OUT/ 2>/dev/null
grep -h '^|\|"ok"\|rc \|Error' $R/*.log | grep -v '"kernel": "fwd' | cut -c1-300
