#!/usr/bin/env bash
# Run conceptvec's open-unlearning plugin against a real checkout of locuslab/open-unlearning:
# register(), the ConceptvecEvaluator and launch() through their src/eval.py, on a tiny model.
#
#   benchmarks/open_unlearning_check.sh CHECKOUT [PYTHON]
#
# PYTHON (default: python) must have conceptvec's deps plus what their eval imports:
#   pip install "conceptvec[plugins]" deepspeed hydra-colorlog scipy scikit-learn
# (not `pip install -e CHECKOUT`: its pins downgrade transformers and torch).
# Appends one line (date, checkout commit, pytest summary) to benchmarks/results/open_unlearning.txt.
set -euo pipefail
checkout=$(cd "${1:?usage: $0 CHECKOUT [PYTHON]}" && pwd)
python=${2:-python}
here=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$checkout" rev-parse --short HEAD)
cd "$here"
set +e
summary=$(CONCEPTVEC_OPEN_UNLEARNING="$checkout" PYTHONPATH="$here" OMP_NUM_THREADS=1 \
    "$python" -m pytest -q -p no:cacheprovider tests/test_plugins_open_unlearning_checkout.py 2>&1)
rc=$?
set -e
echo "$summary" | tail -20
versions=$("$python" -c "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in ('deepspeed', 'hydra-colorlog', 'hydra-core', 'transformers', 'torch', 'lm_eval')))")
line="$(date -u +%Y-%m-%dT%H:%MZ) open-unlearning $commit ($versions): $(echo "$summary" | tail -1)"
echo "$line" >> benchmarks/results/open_unlearning.txt
echo "$line"
exit $rc
