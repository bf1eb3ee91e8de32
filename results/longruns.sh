#!/usr/bin/env bash
# The reference results' long CPU runs (issues 32 and 33) as two lanes of resumable jobs, one
# torch thread each, niced — what bench/gpu.sh longrun does on a lent GPU, for a CPU machine kept
# between working sessions. Every job continues where it stopped when started again; a lane runs
# its jobs in order and skips the finished ones. Run from the repository root:
#
#   bash results/longruns.sh start     # start (or continue) both lanes; idempotent
#   bash results/longruns.sh status    # where each job stands
#   bash results/longruns.sh stop      # stop both lanes (each job keeps its last save)
#   bash results/longruns.sh run JOB   # one job in the foreground (what a lane runs)
#   bash results/longruns.sh carry     # each behavior job's state, without its replay log, into
#                                      # data/behavior/carried/ENV.pt: commit it, and a fresh
#                                      # machine goes on from there instead of from step 0
#
# Jobs (LANE_A, LANE_B override the lists):
#   behavior:ENV:STEPS           online SAC for a behavior policy (python -m micro.datagen.behavior);
#                                a new run goes on from data/behavior/carried/ENV.pt if there is one
#   population:ALGO:DATASET      ALGO's reference runs on a carded dataset (python -m micro.results
#                                train: seeds 0 1 2 as one population from its shipped dynamics,
#                                200 epochs, evaluated every 5 on 10 episodes)
#   dynamics:DATASET             the dynamics model a carded dataset's runs share (python -m
#                                micro.results fit), into $LONGRUNS/dynamics-DATASET; ship it
#                                (python -m micro.results dynamics) and commit it before a
#                                population on that dataset starts: populations load the shipped one
#   published:DATASET:SEED       the published MICRO trainer (bench/published_micro.py), 200 epochs,
#                                its dynamics fit capped at 30; needs the published code in $REF
#                                (fetch github:xiaoyinliu0714/MICRO; git archive HEAD | tar x -C $REF)
# State lives in $LONGRUNS (default runs/longruns): data/ (each dataset remade by its card and
# checked to the byte), code-COMMIT/ (a job runs the commit it started with, to its end: its
# jobs/JOB.code says which), logs/, behavior/, runs/, published/. Ship from there with
# python -m micro.results ship / import-published, and datagen.behavior pick / export.
set -uo pipefail
REPO=$(pwd)
[ -f "$REPO/train.py" ] && [ -d "$REPO/results" ] || { echo "error: run from the repository root" >&2; exit 2; }
L=$(realpath -m "${LONGRUNS:-runs/longruns}")
PY=${PY:-$REPO/.venv/bin/python}
REF=${REF:-/tmp/ref-micro}  # the published code (git archive HEAD of its clone); REF_COMMIT= its commit
REF_SCRIPT=${REF_SCRIPT:-$REPO/../shared/bench/ref_micro_train.py}
CARRIED=${CARRIED:-$REPO/data/behavior/carried}  # behavior runs' carried states (carry)
LANE_A=${LANE_A-behavior:walker2d:1000000 behavior:hopper:1000000 population:micro:hopper-medium-200k population:micro:walker2d-medium-200k}
LANE_B=${LANE_B-behavior:halfcheetah:1000000 published:halfcheetah-medium-200k:0 population:mobile:hopper-medium-200k population:mobile:walker2d-medium-200k}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1

task_of() { echo "${1%-*}-v2"; }  # hopper-medium-200k -> hopper-medium-v2

runs_of() {  # the population's run folders that reached a checkpoint
    ls -d "$L/runs/$(task_of "$2")/$1"/seed*/checkpoints/last.pt 2>/dev/null | sed 's#/checkpoints/last.pt##'
}

finished() {  # finished JOB: exit 0 when the job has nothing left to do
    IFS=: read -r kind a b <<< "$1"
    case $kind in
    behavior) [ -f "$L/behavior/$a/state.pt" ] && "$PY" -c "import sys, torch
sys.exit(torch.load(sys.argv[1], weights_only=False)['step'] < int(sys.argv[2]))" "$L/behavior/$a/state.pt" "$b" ;;
    population) runs=$(runs_of "$a" "$b"); [ -n "$runs" ] || return 1
        for r in $runs; do [ -f "$r/policy.pt" ] || return 1; done ;;
    published) [ -f "$L/published/$a-seed$b/finished.json" ] ;;
    dynamics) [ -f "$L/dynamics-$a/model.pt" ] ;;
    *) return 1 ;;
    esac
}

code_of() {  # the frozen code a job runs: the commit it started with
    local file="$L/jobs/${1//:/_}.code"
    if [ ! -f "$file" ]; then
        # a lane reaches a new job unattended, perhaps while the tree is being edited: the job
        # runs HEAD as committed, and the log says what it leaves out
        if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
            echo "note: $1 runs commit $(git -C "$REPO" rev-parse --short HEAD); the uncommitted changes in $REPO are not in it" >&2
        fi
        local dir="$L/code-$(git -C "$REPO" rev-parse --short HEAD)"
        if [ ! -d "$dir" ]; then  # both lanes may get here at once: the first to rename wins
            local tmp
            tmp=$(mktemp -d "$dir.XXXXXX") && git -C "$REPO" archive HEAD | tar x -C "$tmp" || return 1
            mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
            [ -d "$dir" ] || return 1
        fi
        mkdir -p "$L/jobs" && echo "$dir" > "$file"
    fi
    cat "$file"
}

data_of() {  # data_of DATASET: the card's file, remade here once and checked to the byte
    local f="$L/data/$1.hdf5"
    if [ ! -f "$f" ]; then
        mkdir -p "$L/data"
        "$PY" -m micro.results remake "$1" --out "$f" >&2 || { rm -f "$f"; return 1; }
    fi
    echo "$f"
}

run_job() {
    local job=$1 code data
    IFS=: read -r kind a b <<< "$job"
    case $kind in behavior|population|published|dynamics) ;; *) echo "error: unknown job $job" >&2; return 2 ;; esac
    if finished "$job"; then echo "$job: finished"; return 0; fi
    code=$(code_of "$job") || return 1
    cd "$code" || return 1
    echo "$(date -u +%FT%TZ) $job: code $code"
    case $kind in
    behavior)
        local carried=()
        if [ ! -f "$L/behavior/$a/state.pt" ] && [ -f "$CARRIED/$a.pt" ]; then
            carried=(--carried "$CARRIED/$a.pt")
        fi
        nice -n 19 "$PY" -m micro.datagen.behavior --env "$a" --steps "$b" --out "$L/behavior/$a" \
            --threads 1 --no_progress "${carried[@]}" ;;
    dynamics)  # the same command again continues a fit from its last saved state
        data=$(data_of "$a") || return 1
        nice -n 19 "$PY" -m micro.results fit "$a" --data "$data" --out "$L/dynamics-$a" \
            --no_progress ;;
    population)  # the reference recipe (micro/results.py): starts the runs, or continues them
        data=$(data_of "$b") || return 1
        nice -n 19 "$PY" -m micro.results train "$a" "$b" --data "$data" --logdir "$L/runs" \
            --no_progress ;;
    published)
        [ -f "$REF/train.py" ] && [ -d "$REF/utils" ] || { echo "error: no published code in $REF (fetch github:xiaoyinliu0714/MICRO, git archive HEAD | tar x -C $REF)" >&2; return 1; }
        data=$(data_of "$a") || return 1
        # its progress bar redrawn every 60 s, not ten times a second (300 kB of log an epoch)
        TQDM_MININTERVAL=60 nice -n 19 "$PY" bench/published_micro.py --script "$REF_SCRIPT" \
            --ref "$REF" --task "$(task_of "$a")" --dataset "$data" --seed "$b" --device cpu \
            --out "$L/published/$a-seed$b" --set epoch=200 --set dynamics_max_epochs=30 ;;
    esac
}

lane_running() {  # its pid is alive and still the lane's (pids are reused after a lane ends)
    [ -f "$L/lane-$1.pid" ] && grep -qs "lane-$1.sh" "/proc/$(cat "$L/lane-$1.pid")/cmdline"
}

case ${1:-status} in
start)
    mkdir -p "$L/logs"
    for lane in A B; do
        if lane_running $lane; then echo "lane $lane: running (pid $(cat "$L/lane-$lane.pid"))"; continue; fi
        jobs_var=LANE_$lane
        cp "$REPO/results/longruns.sh" "$L/lane-$lane.sh"  # the lane reads its own copy: edit this freely
        LONGRUNS=$L setsid bash "$L/lane-$lane.sh" lane ${!jobs_var} \
            >> "$L/logs/lane-$lane.log" 2>&1 < /dev/null &
        echo $! > "$L/lane-$lane.pid"
        echo "lane $lane: started (pid $!): ${!jobs_var}; log $L/logs/lane-$lane.log"
    done ;;
lane)  # a lane's body: its jobs in order, stopping at the first that fails
    shift
    # setsid made the lane a session, and with the kernel's autogroups a session gets its own
    # share of the CPU whatever its nice: niced as a whole, it yields to everything else
    echo 19 > /proc/self/autogroup 2>/dev/null || true
    for job in "$@"; do run_job "$job" || { echo "$job failed: the lane stops here"; exit 1; }; done ;;
run) run_job "$2" ;;
carry)
    for job in $LANE_A $LANE_B; do
        IFS=: read -r kind a b <<< "$job"
        [ "$kind" = behavior ] && [ -f "$L/behavior/$a/state.pt" ] || continue
        mkdir -p "$CARRIED"
        "$PY" -m micro.datagen.behavior carry "$L/behavior/$a" --to "$CARRIED/$a.pt" --force || exit 1
    done ;;
stop)
    for lane in A B; do
        lane_running $lane && kill -- -"$(cat "$L/lane-$lane.pid")" && echo "lane $lane: stopped"
        rm -f "$L/lane-$lane.pid"
    done ;;
status)
    for lane in A B; do
        jobs_var=LANE_$lane
        lane_running $lane && echo "lane $lane: running" || echo "lane $lane: not running"
        for job in ${!jobs_var}; do
            IFS=: read -r kind a b <<< "$job"
            state=
            if finished "$job"; then state=finished
            else case $kind in
                behavior) state=$(awk -F, 'NR > 1 {s = $1; n = $5} END {if (s) printf "step %d of '"$b"', last evaluation %.1f normalized", s, n}' \
                    "$L/behavior/$a/evals.csv" 2>/dev/null)
                    [ -z "$state" ] && [ ! -f "$L/behavior/$a/state.pt" ] && [ -f "$CARRIED/$a.pt" ] && \
                        state="not started here; goes on from $CARRIED/$a.pt" ;;
                population) r=$(runs_of "$a" "$b" | head -n 1)
                    state=${r:+epoch $(tail -n 1 "$r/progress.csv" | cut -d, -f1) of 200 saved}
                    [ -n "$r" ] && state+=$("$PY" -c "import csv, sys
last = []
for run in sys.argv[1:]:
    evals = [r for r in csv.DictReader(open(run + '/progress.csv')) if r['eval_normalized_score']]
    last += [f\"{float(evals[-1]['eval_normalized_score']):.1f}\"] if evals else []
print(f', last evaluation {\" / \".join(last)} normalized' if last else '')" $(runs_of "$a" "$b"))
                    [ -z "$state" ] && [ -d "$L/runs/$(task_of "$b")/$a" ] && state="started, no epoch saved" ;;
                dynamics) [ -f "$L/dynamics-$a/fit_checkpoint.pt" ] && \
                    state="fitting, state saved at $(date -u -r "$L/dynamics-$a/fit_checkpoint.pt" +%H:%MZ)" ;;
                published) state=$("$PY" -c "import json, sys
s = json.load(open(sys.argv[1]))
print(f'epoch {max(r.get(\"to_epoch\", 0) for r in s)} of 200 saved')" "$L/published/$a-seed$b/sessions.json" 2>/dev/null)
                    [ -z "$state" ] && [ -f "$L/published/$a-seed$b/resume.pt" ] && state="started (no session recorded)" ;;
                esac
                state="${state:-not started}"
            fi
            echo "  $job: $state"
        done
    done ;;
*) echo "usage: bash results/longruns.sh start|status|stop|carry|run JOB" >&2; exit 2 ;;
esac
