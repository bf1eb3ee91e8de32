#!/usr/bin/env bash
# Remake docs/results/DATASET/ from the shipped runs under results/DATASET/: report.py's table,
# score curves and diagnostics; then, on every shipped policy (all algorithms side by side),
# eval.py's clean score by episode,
# its full sim2real grid (10 x 10, 10 episodes per cell) and all three attacks (10 budgets,
# 10 episodes each), one figure each with its numbers in <name>-summary.md; and, for halfcheetah,
# which of 50 clean episodes flip (flips.txt: the flip rate, and a 50-episode score). The tables
# of every shipped run (docs/results/runs.md) and of datasets by algorithms
# (docs/results/overview.md) are remade too.
# Run from the repository root:  bash results/figures.sh [DATASET]
set -euo pipefail
DATASET=${1:-halfcheetah-medium-200k}
PY=${PY:-.venv/bin/python}
# one torch thread, as the committed figures were made: eval numbers move with the thread count
export OMP_NUM_THREADS=1
OUT=docs/results/$DATASET
shopt -s nullglob
POLICIES=(results/"$DATASET"/*/seed*/policy.pt)
shopt -u nullglob
if [[ ${#POLICIES[@]} -eq 0 ]]; then
    echo "error: no shipped policy under results/$DATASET (python -m micro.results ship)" >&2
    exit 1
fi
mkdir -p "$OUT"
$PY -m micro.results table > docs/results/runs.md
$PY -m micro.results overview > docs/results/overview.md
$PY report.py "results/$DATASET" --out "$OUT"
$PY eval.py --policy_path "${POLICIES[@]}" --choice clean --eval_episodes 10 \
    --out "$OUT" --force --no_progress
$PY eval.py --policy_path "${POLICIES[@]}" --choice sim2real --eval_episodes 10 \
    --out "$OUT" --force --no_progress
$PY eval.py --policy_path "${POLICIES[@]}" --choice attack --attack_mode all --eval_episodes 10 \
    --out "$OUT" --force --no_progress
if [[ $DATASET == halfcheetah-* ]]; then
    $PY results/flips.py "${POLICIES[@]}" --episodes 50 > "$OUT/flips.txt"
fi
