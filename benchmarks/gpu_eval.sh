#!/usr/bin/env bash
# The GPU benchmark of the weights-only intrinsic evaluation, as one prepared script for a
# lent GPU machine (no internet, no model weights):
#   bash benchmarks/gpu_eval.sh OUTDIR
# 1. writes a Llama-3.1-8B-shaped bf16 checkpoint and a "fine-tuned" twin (every 2-D weight
#    nudged by 1e-3 relative) on the machine's own disk;
# 2. times `conceptvec map` of the down matrix alone (the target: evaluation <= 2x this);
# 3. runs benchmarks/bench_eval.py on the pair on cuda: float64 cosine / L2 / percentiles of
#    every MLP vector, Jaccard@200 of all 458,752 down columns, against the float32 GEMM
#    floor (no naive loop: it would take hours).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/gpu_common.sh
source benchmarks/gpu_common.sh "${1:-}" gpu-eval-out
log "write the 8B-shaped pair"
[ -f "$CK/l8b/config.json" ] || python benchmarks/make_checkpoint.py --shape llama-3.1-8b \
  --out "$CK/l8b" --device cuda | tee -a "$OUT/log.txt"
python benchmarks/make_checkpoint.py --shape llama-3.1-8b --out "$CK/l8b-nudged" \
  --device cuda --nudge 1e-3 | tee -a "$OUT/log.txt"
log "conceptvec map, down only"
rm -rf "$CK/atlas-down"
t0=$(date +%s.%N)
python -m conceptvec.cli map "$CK/l8b" -o "$CK/atlas-down" --matrices down --device cuda \
  --export none -q --json >"$OUT/map-down.json" 2>>"$OUT/log.txt"
t1=$(date +%s.%N)
log "map down: wall $(python -c "print(round($t1 - $t0, 2))") s"
log "bench_eval on cuda"
python benchmarks/bench_eval.py --base "$CK/l8b" --unlearned "$CK/l8b-nudged" --device cuda \
  --naive-layers 0 --out "$OUT/eval-8b-gpu.json" 2>>"$OUT/log.txt" | tee -a "$OUT/log.txt"
