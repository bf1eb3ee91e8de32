#!/usr/bin/env bash
# Robustness over the last snapshots of long runs as well as their final policies: all three
# attacks (10 budgets, 10 episodes each) on every RUN/snapshots/epoch*.pt and RUN/policy.pt of
# the runs given, averaged per algorithm (seeds and snapshots alike), with each policy's own
# mean over ε in the summary, so one sees whether the algorithms' order holds from snapshot to
# snapshot or one policy makes it. Snapshots come from `train.py --snapshot_freq N` or
# `python -m micro.results export RUN` while a run trains; they are not shipped (about 1 MB each).
# Run from the repository root:  bash results/snapshots.sh OUT RUN_DIR...
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: bash results/snapshots.sh OUT RUN_DIR..." >&2
    exit 2
fi
OUT=$1
shift
PY=${PY:-.venv/bin/python}
# one torch thread, as the committed figures were made: eval numbers move with the thread count
export OMP_NUM_THREADS=1
POLICIES=()
for run in "$@"; do
    shopt -s nullglob
    files=("$run"/snapshots/epoch*.pt)
    shopt -u nullglob
    snaps=()  # in epoch order: epoch5 before epoch10
    [[ ${#files[@]} -gt 0 ]] && mapfile -t snaps < <(printf '%s\n' "${files[@]}" | sort -V)
    if [[ ${#snaps[@]} -eq 0 || ! -f $run/policy.pt ]]; then
        echo "error: $run needs snapshots/epoch*.pt and policy.pt" >&2
        exit 1
    fi
    POLICIES+=("${snaps[@]}" "$run/policy.pt")
done
$PY eval.py --policy_path "${POLICIES[@]}" --choice attack --attack_mode all \
    --eval_episodes "${EPISODES:-10}" --group algo --out "$OUT" --force --no_progress
