# Sourced by the gpu_*.sh benchmark scripts after `cd` to the repo root, with the output folder
# as $1 and the default name as $2: sets OUT (absolute), CK (the checkpoint folder, $CK_DIR or
# build/cv-bench), PYTHONPATH and log(); installs conceptvec's missing pure-Python deps from
# benchmarks/.wheels (the device machine has no internet); records Python, torch and the GPU.
OUT=${1:-$PWD/build/$2}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CK=${CK_DIR:-$PWD/build/cv-bench}
mkdir -p "$CK"
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
python -c "import typer, gguf, einops" 2>/dev/null || python -m pip install -q --no-index \
  --find-links benchmarks/.wheels typer gguf einops >>"$OUT/log.txt" 2>&1
python -c "import sys, torch; print(sys.version.split()[0], torch.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee -a "$OUT/log.txt"
