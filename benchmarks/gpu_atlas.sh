#!/usr/bin/env bash
# The GPU atlas benchmark, as one prepared script for a lent GPU machine (no internet):
#   bash benchmarks/gpu_atlas.sh OUTDIR
# 1. installs conceptvec's missing pure-Python deps from benchmarks/.wheels (carried along);
# 2. checks GPU against CPU on a small random checkpoint (same top tokens);
# 3. writes a Llama-3.1-8B-shaped bf16 checkpoint on the machine's own disk;
# 4. times `conceptvec map` from process start until the atlas is written, for up alone
#    (458,752 neurons) and for up+gate+down, and in the same run the bare bf16 GEMM floor,
#    conceptvec's projection phase and the naive one-neuron-at-a-time script.
set -uo pipefail
OUT=${1:-/tmp/gpu-atlas-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
# Run the committed sources (benchmarks/.wheels/src.tar, from `git archive HEAD`) when
# present, so work in progress in the working tree cannot break the run.
SRC=$PWD
if [ -f benchmarks/.wheels/src.tar ]; then
  SRC=$(mktemp -d) && tar -xf benchmarks/.wheels/src.tar -C "$SRC" && cp -r benchmarks/.wheels "$SRC/benchmarks/"
fi
cd "$SRC"
export PYTHONPATH=$SRC TOKENIZERS_PARALLELISM=false
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
python -c "import typer, gguf, einops" 2>/dev/null || python -m pip install -q --no-index \
  --find-links benchmarks/.wheels typer gguf einops >>"$OUT/log.txt" 2>&1
python -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/log.txt"
nproc | tee -a "$OUT/log.txt"
CK=${CK_DIR:-/tmp/cv-bench}
mkdir -p "$CK"

log "check: GPU (bf16 and fp32) against CPU on a SmolLM2-shaped random checkpoint"
python benchmarks/make_checkpoint.py --shape smollm2-135m --out "$CK/smol" --device cuda | tee -a "$OUT/log.txt"
for spec in "cpu float32" "cuda float32" "cuda bfloat16"; do
  set -- $spec
  python -m conceptvec.cli map "$CK/smol" -o "$CK/smol-$1-$2" --device "$1" --dtype "$2" \
    --layers 0-3 --export none -q >>"$OUT/log.txt" 2>&1 || log "map $spec FAILED"
done
python - "$CK" <<'EOF' 2>&1 | tee -a "$OUT/log.txt"
import sys, torch
from conceptvec.atlas import Atlas
ck = sys.argv[1]
ref = Atlas(f"{ck}/smol-cpu-float32")
for name in ("cuda-float32", "cuda-bfloat16"):
    other = Atlas(f"{ck}/smol-{name}")
    same, total, err = 0, 0, 0.0
    for layer, m, s in ref.shards():
        o = other.shard(layer, m)
        same += int((s["top_ids"][:, 0] == o["top_ids"][:, 0]).sum())
        total += len(s["top_ids"])
        err = max(err, float((s["top_values"] - o["top_values"]).abs().max()))
    print(f"{name} vs cpu float32: same top-1 {same}/{total}, max |score diff| {err:.4f}")
EOF

log "generate a Llama-3.1-8B-shaped bf16 checkpoint"
python benchmarks/make_checkpoint.py --shape llama-3.1-8b --out "$CK/l8b" --device cuda | tee -a "$OUT/log.txt"

for mats in up up,gate,down; do
  log "conceptvec map --matrices $mats (from process start)"
  rm -rf "$CK/atlas"
  t0=$(date +%s.%N)
  python -m conceptvec.cli map "$CK/l8b" -o "$CK/atlas" --matrices "$mats" --device cuda \
    --export none -q --json >"$OUT/map-$mats.json" 2>>"$OUT/log.txt"
  rc=$?
  t1=$(date +%s.%N)
  log "map $mats: rc=$rc wall $(python -c "print(round($t1 - $t0, 2))") s; report: $(tr -d '\n ' <"$OUT/map-$mats.json")"
  du -sh "$CK/atlas" | tee -a "$OUT/log.txt"
done

log "floor, projection phase and naive baseline (all 32 up matrices, in one process)"
python benchmarks/bench_atlas.py --model "$CK/l8b" --device cuda --matrices up --skip-e2e \
  --naive-sample 2048 --json "$OUT/bench-up.json" >>"$OUT/log.txt" 2>&1 || log "bench up FAILED"
log "same for up,gate,down"
python benchmarks/bench_atlas.py --model "$CK/l8b" --device cuda --matrices up,gate,down \
  --skip-e2e --naive-sample 1024 --json "$OUT/bench-all.json" >>"$OUT/log.txt" 2>&1 || log "bench all FAILED"
log "done"
