#!/usr/bin/env bash
# Unlearning on an 8B-shaped model on the GPUs there are (FSDP), as one prepared script:
#   bash benchmarks/gpu_unlearning.sh OUTDIR
# 1. writes a Llama-3.1-8B-shaped bf16 checkpoint (benchmarks/make_checkpoint.py) and a
#    small byte-level tokenizer into it (random weights: this measures cost, not forgetting);
# 2. for each method, runs `conceptvec unlearn` under `accelerate launch` with FSDP
#    (FULL_SHARD, one wrap per LlamaDecoderLayer, use_orig_params for partial scopes),
#    STEPS steps of global batch BATCH, and records wall time, s/step and peak GPU memory.
# Not run yet: see docs/unlearning.md ("Benchmarks") and benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$PWD/build/gpu-unlearning-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
CK=${CK_DIR:-$PWD/build/llama-8b}
STEPS=${STEPS:-5}
BATCH=${BATCH:-8}
METHODS=${METHODS:-"ga gd npo rmu needle"}
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
log "GPUs: $NGPU"
if [ ! -f "$CK/config.json" ]; then
  python benchmarks/make_checkpoint.py --shape llama-3.1-8b --out "$CK" --device cuda >>"$OUT/log.txt" 2>&1
  python -c "import sys; sys.path.insert(0, 'tests'); from conftest import make_tokenizer; make_tokenizer('bytelevel').save_pretrained('$CK')"
fi
for M in $METHODS; do
  EXTRA=""; [ "$M" = needle ] && EXTRA="--neuron L20.100"
  log "method $M"
  /usr/bin/time -v accelerate launch --num_processes "$NGPU" --use_fsdp \
    --fsdp_sharding_strategy FULL_SHARD --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
    --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --fsdp_use_orig_params true \
    --fsdp_state_dict_type FULL_STATE_DICT \
    -m conceptvec.cli unlearn "$CK" --concept "Ancient Rome" \
    --concepts conceptvectors-dev --method "$M" $EXTRA \
    --steps "$STEPS" --batch-size "$BATCH" --max-length 512 --no-eval --json \
    --out "$OUT/ck-$M" --overwrite >"$OUT/$M.json" 2>"$OUT/$M.err"
  log "  rc=$? $(grep -E 'Elapsed|Maximum resident' "$OUT/$M.err" | tr '\n' ' ')"
  python - "$OUT/$M.json" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    h = r["history"]
    print(f"  {r['method']}: {r['steps_done']} steps, {r['wall_seconds']:.1f} s, final {r['final_losses']}")
except Exception as e:
    print("  no record:", e)
PY
  rm -rf "$OUT/ck-$M"   # 16 GB each; the record is in $M.json
done
nvidia-smi --query-gpu=name,memory.total --format=csv >>"$OUT/log.txt" 2>&1
