#!/usr/bin/env bash
# The exact two-pass atlas on a GPU (issue 13, part 4), as one prepared script for a lent GPU
# machine (no internet, no model weights):
#   bash benchmarks/gpu_twopass.sh OUTDIR          # about 5 minutes on an H200
# 1. installs conceptvec's missing pure-Python deps from benchmarks/.wheels (carried along);
# 2. writes a Llama-3.1-8B-shaped bf16 checkpoint on the machine's own disk (kept for reuse);
# 3. runs benchmarks/bench_atlas.py on cuda for a float32 atlas of all 32 up matrices
#    (458,752 neurons, top and bottom 20 over 128,256 tokens), in one process: the float32
#    GEMM floor (no TF32), conceptvec's float32 projection phase, GEMM + torch.topk, the bf16
#    floor (float32 reductions), the fp8 e4m3 floor for reference, the two-pass path
#    (`--precision two-pass`: bf16 scores, float32 rescoring, a proof per neuron) checked
#    identical to the float32 projection phase, and the naive one-neuron loop.
# If the GPU's float32 GEMMs change their bits with the GEMM's shape (cuBLAS may pick other
# kernels or split-K by shape), choose_precision refuses two-pass and the JSON says why
# ("two_pass_refused"); that is a result too.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/gpu_common.sh
source benchmarks/gpu_common.sh "${1:-}" gpu-twopass-out
# A dry run of the plumbing on CPU: DEVICE=cpu SHAPE=smollm2-135m bash benchmarks/gpu_twopass.sh
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-llama-3.1-8b}
MODEL=$CK/l8b
[ "$SHAPE" = llama-3.1-8b ] || MODEL=$CK/$SHAPE
log "write the $SHAPE-shaped checkpoint"
[ -f "$MODEL/config.json" ] || python benchmarks/make_checkpoint.py --shape "$SHAPE" \
  --out "$MODEL" --device "$DEVICE" | tee -a "$OUT/log.txt"
log "float32 atlas of the up rows: floors, float32 path, two-pass, naive"
python benchmarks/bench_atlas.py --model "$MODEL" --device "$DEVICE" --dtype float32 \
  --matrices up --skip-e2e --naive-sample 512 --repeat 2 --json "$OUT/twopass-up.json" \
  2>&1 | tee -a "$OUT/log.txt" || log "bench_atlas FAILED"
log "done"
