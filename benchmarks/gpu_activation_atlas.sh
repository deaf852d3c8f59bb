#!/usr/bin/env bash
# The activation atlas's corpus pass on a GPU (issue 22, part 5), as one prepared script for a
# lent GPU machine (no internet, no model weights, no tokenizer):
#   bash benchmarks/gpu_activation_atlas.sh OUTDIR        # a few minutes on an H100/H200
# 1. installs conceptvec's missing pure-Python deps from benchmarks/.wheels (carried along);
# 2. writes a Llama-3.1-8B-shaped bf16 checkpoint on the machine's own disk (kept for reuse);
# 3. runs benchmarks/bench_activation_atlas.py on cuda in bf16 over random token ids in
#    sequences of 95 tokens (Transluce's length): the bare forward pass (the floor), the pass
#    with our hooks on all 32 layers (458,752 neurons, top and bottom 20 exemplars each), and
#    the naive per-neuron Python top-k on 64 neurons (extrapolated). The JSON holds
#    tokens_per_s and transluce_corpus_gpu_hours = 95e6 / tokens_per_s / 3600, to set against
#    Transluce's 64 hours on 2 A100s (128 A100-hours; see benchmarks/RESULTS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/gpu_common.sh
source benchmarks/gpu_common.sh "${1:-}" gpu-activation-atlas-out
# A dry run of the plumbing on CPU: DEVICE=cpu SHAPE=smollm2-135m TOKENS=2048 bash benchmarks/gpu_activation_atlas.sh
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-llama-3.1-8b}
TOKENS=${TOKENS:-262144}
MODEL=$CK/l8b
[ "$SHAPE" = llama-3.1-8b ] || MODEL=$CK/$SHAPE
log "write the $SHAPE-shaped checkpoint"
[ -f "$MODEL/config.json" ] || python benchmarks/make_checkpoint.py --shape "$SHAPE" \
  --out "$MODEL" --device "$DEVICE" | tee -a "$OUT/log.txt"
DTYPE=bfloat16
[ "$DEVICE" = cpu ] && DTYPE=float32
log "corpus pass: floor, conceptvec hooks on every layer, naive per-neuron top-k"
python benchmarks/bench_activation_atlas.py --model "$MODEL" --device "$DEVICE" \
  --dtype "$DTYPE" --tokens "$TOKENS" --seq-len 95 --batch-tokens 65536 --repeat 2 \
  --naive-neurons 64 --note "lent $DEVICE machine" --json "$OUT/activation-atlas.json" \
  2>&1 | tee -a "$OUT/log.txt" || log "bench_activation_atlas FAILED"
log "done"
