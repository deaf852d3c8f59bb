#!/usr/bin/env bash
# The GPU atlas benchmark, as one prepared script for a lent GPU machine (no internet):
#   bash benchmarks/gpu_atlas.sh OUTDIR
# 1. installs conceptvec's missing pure-Python deps from benchmarks/.wheels (carried along);
# 2. times top-k variants on one Llama-3.1-8B layer's scores;
# 3. writes a Llama-3.1-8B-shaped bf16 checkpoint on the machine's own disk;
# 4. times `conceptvec map` from process start until the atlas is written: up alone
#    (458,752 neurons; twice, then once with 8 readers, whose atlas must be identical) and
#    up+gate+down;
# 5. measures in one process the bare bf16 GEMM floor, conceptvec's projection phase and
#    the naive one-neuron-at-a-time script (benchmarks/bench_atlas.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$PWD/build/gpu-atlas-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CK=${CK_DIR:-$PWD/build/cv-bench}
# Run the committed sources (benchmarks/.wheels/src.tar, from `git archive HEAD`) when
# present, so work in progress in the working tree cannot break the run.
SRC=$PWD
if [ -f benchmarks/.wheels/src.tar ]; then
  SRC=$(mktemp -d) && tar -xf benchmarks/.wheels/src.tar -C "$SRC" && cp -r benchmarks/.wheels "$SRC/benchmarks/"
fi
cd "$SRC"
# shellcheck source=benchmarks/gpu_common.sh
CK_DIR=$CK source benchmarks/gpu_common.sh "$OUT" gpu-atlas-out

log "top-k variants on one Llama-3.1-8B layer's scores"
python benchmarks/bench_topk.py --device cuda --rows 14336 --vocab 128256 --d-model 4096 \
  --dtype bfloat16 2>&1 | tee -a "$OUT/log.txt"

log "generate a Llama-3.1-8B-shaped bf16 checkpoint"
python benchmarks/make_checkpoint.py --shape llama-3.1-8b --out "$CK/l8b" --device cuda | tee -a "$OUT/log.txt"

timed_map() {  # NAME MATRICES [VAR=VALUE...]: conceptvec map, from process start to atlas written
  local name=$1 mats=$2
  shift 2
  rm -rf "$CK/atlas-$name"
  local t0 t1 rc
  t0=$(date +%s.%N)
  env "$@" python -m conceptvec.cli map "$CK/l8b" -o "$CK/atlas-$name" --matrices "$mats" \
    --device cuda --export none -q --json >"$OUT/map-$name.json" 2>>"$OUT/log.txt"
  rc=$?
  t1=$(date +%s.%N)
  log "map $name ($mats): rc=$rc wall $(python -c "print(round($t1 - $t0, 2))") s; report: $(tr -d '\n ' <"$OUT/map-$name.json")"
}
timed_map up up
timed_map up-again up
timed_map up-8-readers up CONCEPTVEC_READ_AHEAD=8
python benchmarks/compare_atlases.py "$CK/atlas-up" "$CK/atlas-up-8-readers" 2>&1 | tee -a "$OUT/log.txt"
timed_map all up,gate,down
du -sh "$CK/atlas-all" | tee -a "$OUT/log.txt"

log "floor, projection phase and naive baseline (all 32 up matrices, in one process)"
python benchmarks/bench_atlas.py --model "$CK/l8b" --device cuda --matrices up --skip-e2e \
  --naive-sample 2048 --json "$OUT/bench-up.json" >>"$OUT/log.txt" 2>&1 || log "bench up FAILED"
log "same for up,gate,down"
python benchmarks/bench_atlas.py --model "$CK/l8b" --device cuda --matrices up,gate,down \
  --skip-e2e --naive-sample 1024 --json "$OUT/bench-all.json" >>"$OUT/log.txt" 2>&1 || log "bench all FAILED"
log "done"
