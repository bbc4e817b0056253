#!/usr/bin/env bash
# Regenerates every sample trace in datasets/samples/ (about a minute on 2 cores):
#   bash datasets/regenerate.sh
# Training runs use seed 0 (16 steps), held-out runs seed 1 (8 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf datasets/samples
for w in gpt2 llama vit moe accum-eval layerdrop generate-train; do
  "$PY" -m prefetch record --workload "$w" --steps 16 --seed 0 --threads 1 --no-progress --out "datasets/samples/$w/train" > /dev/null
  "$PY" -m prefetch record --workload "$w" --steps 8 --seed 1 --threads 1 --no-progress --out "datasets/samples/$w/heldout" > /dev/null
done
# stable file names: the recorder names traces <workload>-r<rank>-p<pid>
for f in datasets/samples/*/*/*.events.arrow; do
  d=$(dirname "$f"); stem=${f%.events.arrow}; w=$(basename "$(dirname "$d")"); run=$(basename "$d")
  for suffix in events.arrow tensors.arrow manifest.json; do mv "$stem.$suffix" "$d/$w-$run.$suffix"; done
done
du -sh datasets/samples
