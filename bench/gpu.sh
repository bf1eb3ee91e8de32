#!/usr/bin/env bash
# What a lent GPU machine runs for this project (README, "On a GPU"): the test suite on CUDA,
# our step and the published code's step timed in one command, a profile, and real runs.
#   bash bench/gpu.sh "tests speed profile train population"   (default: "tests speed"; $OUT: logs)
# Wheels for packages the machine lacks are read from .whl/, the published code from .ref/micro
# (git archive of github.com/xiaoyinliu0714/MICRO) and its timing script from .ref/bench. Make
# them here first (both paths git-ignored via .git/info/exclude), then carry .whl and .ref with
# the command:
#   REF_GIT=<clone of the published code> REF_BENCH=<dir of ref_micro_speed.py> \
#   bash bench/gpu.sh prepare
# The long runs:  LONG_DATASET=hopper-medium-200k LONG_ALGOS="micro mobile" \
#   LONG_SEEDS="0 1 2" LONG_SECONDS=500 bash bench/gpu.sh longrun   (again to continue)
set -uo pipefail
if [ "${1:-}" = prepare ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.ref/\n' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl gymnasium==1.4.0 mujoco==4.0.0 mujoco-core==4.0.0 \
        mujoco-studio==4.0.0 farama-notifications==0.0.6 glfw==2.11.0 pyopengl==3.1.10 \
        websockets minari==0.5.4 || exit 1
    mkdir -p .ref/micro .ref/bench
    git -C "$REF_GIT" archive HEAD | tar x -C .ref/micro
    cp "$REF_BENCH"/ref_micro_speed.py .ref/bench/
    du -sh .whl .ref
    exit 0
fi
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import gymnasium, mujoco" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
for what in "${@:-tests speed}"; do
  for w in $what; do
    case $w in
    tests)
        # -v: each result is printed as it comes, so a run cut by the timeout still says which
        timeout 120 python3 -m pytest -o addopts= -v --tb=short -p no:cacheprovider tests/test_cuda.py 2>&1 \
            | tee "$OUT/tests-cuda.log" | grep -E "PASSED|FAILED|ERROR|^E |passed|failed"
        timeout ${TEST_TIMEOUT:-450} python3 -m pytest -o addopts= -v --tb=short -p no:cacheprovider -n 14 --dist loadfile \
            tests > "$OUT/tests-all.log" 2>&1
        grep -E "FAILED|ERROR" "$OUT/tests-all.log" | grep -v "^FAILED\|^ERROR" | head -30
        grep -cE "PASSED" "$OUT/tests-all.log"; tail -3 "$OUT/tests-all.log" ;;
    speed)
        python3 bench/speed.py --device cuda --only step algo --json | tee "$OUT/speed.jsonl"
        python3 bench/speed.py --device cuda --only rollout dynamics --json | tee "$OUT/speed-fit.jsonl"
        python3 .ref/bench/ref_micro_speed.py --device cuda --ref .ref/micro --steps 200 \
            | tee "$OUT/ref-speed.txt"
        # MICRO's computation claim: every algorithm's 1000 steps, RAMBO's model updates included
        python3 bench/algos.py --device cuda --rounds 5 --steps 50 --adv_steps 50 \
            --json "$OUT/algos-cuda.json" | tee "$OUT/algos-cuda.txt" ;;
    profile)
        for prec in highest high; do
            python3 bench/profile_step.py --device cuda --matmul_precision $prec \
                | tee "$OUT/profile-$prec.txt" | head -30
        done
        python3 bench/speed.py --device cuda --only step --matmul_precision high --json \
            | tee "$OUT/speed-tf32.jsonl" ;;
    train)
        # A real run: halfcheetah-medium settings on 50k transitions made here by the shipped
        # behavior policy; the dynamics fitted once (at most 30 epochs, timed), then 30 epochs
        # of training on them, then 4 runs sharing the GPU.
        python3 -m micro.datagen.collect --env halfcheetah --kind medium --steps 50000 --seed 0 \
            --out /tmp/hc.hdf5 --no_progress | tail -2
        python3 fit_dynamics.py --task halfcheetah-medium-v2 --dataset /tmp/hc.hdf5 \
            --dynamics_max_epochs 30 --out /tmp/dyn --no_progress 2>&1 | tail -3
        common=(--task halfcheetah-medium-v2 --dataset /tmp/hc.hdf5 --no_progress
                --load_dynamics_path /tmp/dyn)
        python3 train.py "${common[@]}" --epoch 30 --logdir /tmp/one 2>&1 | tail -4
        cat /tmp/one/*/micro/*/timings.json; echo
        start=$(date +%s)
        for seed in 1 2 3 4; do
            python3 train.py "${common[@]}" --epoch 10 --eval_freq 100 --seed $seed \
                --logdir /tmp/four > /tmp/four-$seed.log 2>&1 &
        done
        wait
        echo "4 runs x 10 epochs sharing the GPU: $(( $(date +%s) - start )) s wall"
        cat /tmp/four/*/micro/*/timings.json; echo
        (cd /tmp && tar czf "$OUT/train-runs.tgz" four-*.log \
            $(find one four -name '*.json' -o -name '*.csv' -o -name '*.yaml')) ;;
    population)
        # Issue 31: N seeds as one batched step (train.py --seeds), aggregate steps/s against one
        # run and the published code's step; recorded graphs, eager, and TF32. Then a real
        # population: 8 seeds x 10 epochs against one run, rollouts and evaluations included.
        python3 bench/population.py --device cuda --runs 1 2 4 8 16 32 --rounds 3 \
            --ref .ref/micro --ref_script .ref/bench/ref_micro_speed.py \
            --json "$OUT/population-cuda.json" | tee "$OUT/population-cuda.txt"
        python3 bench/population.py --device cuda --runs 1 8 32 --rounds 3 --eager \
            --json "$OUT/population-eager.json" | tee "$OUT/population-eager.txt"
        python3 bench/population.py --device cuda --runs 1 8 32 --rounds 3 \
            --json "$OUT/population-tf32.json" --matmul_precision high | tee "$OUT/population-tf32.txt"
        python3 -m micro.datagen.collect --env halfcheetah --kind medium --steps 50000 --seed 0 \
            --out /tmp/hc.hdf5 --no_progress | tail -1
        python3 fit_dynamics.py --task halfcheetah-medium-v2 --dataset /tmp/hc.hdf5 \
            --dynamics_max_epochs 5 --out /tmp/dyn-pop --no_progress 2>&1 | tail -1
        common=(--task halfcheetah-medium-v2 --dataset /tmp/hc.hdf5 --no_progress
                --load_dynamics_path /tmp/dyn-pop --epoch 10 --eval_freq 5)
        python3 train.py "${common[@]}" --seed 0 --logdir /tmp/pop1 2>&1 | tail -1
        python3 train.py "${common[@]}" --seeds 0 1 2 3 4 5 6 7 --logdir /tmp/pop8 2>&1 | tail -2
        for d in /tmp/pop1 /tmp/pop8; do echo "$d"; cat $d/*/micro/seed0-*/timings.json; echo; done
        (cd /tmp && tar czf "$OUT/population-runs.tgz" $(find pop1 pop8 -name '*.json' -o \
            -name '*.csv' -o -name '*.yaml')) ;;
    longrun)
        # Issue 32's reference runs on the GPU: $LONG_DATASET (a dataset card under results/)
        # remade by its recipe and trained on only if its SHA-256 is the card's, from the
        # dynamics every run on it shares (results/$LONG_DATASET/dynamics when shipped; else
        # fitted here by the recipe (python -m micro.results fit), resumably: a fit cut by $LONG_SECONDS
        # continues on the next call, and comes back as $OUT/dynamics-DATASET.tgz for
        # `python -m micro.results dynamics`); each of $LONG_ALGOS by the reference recipe
        # (python -m micro.results train: its seeds as one population), side by side. Runs
        # live in .gpu-runs/ (kept while the machine stays warm): a part cut by $LONG_SECONDS
        # (default 500) resumes there on the next call. Each run comes back as
        # $OUT/long-ALGO-seedN.tgz: its small files, and its policy (the last checkpoint's while
        # unfinished); checkpoints and the dynamics copy stay.
        ds=${LONG_DATASET:-hopper-medium-200k}; task=${ds%-*}-v2; dyn=results/$ds/dynamics
        grep -qx '/.gpu-runs/' .git/info/exclude 2>/dev/null || echo '/.gpu-runs/' >> .git/info/exclude
        mkdir -p .gpu-runs/data
        data=.gpu-runs/data/$ds.hdf5
        if [ ! -f "$data" ]; then
            python3 -m micro.results remake "$ds" --out "$data" || { rm -f "$data"; exit 3; }
        fi
        if [ ! -f "$dyn/model.pt" ]; then
            dyn=.gpu-runs/dyn-$ds
            [ -f "$dyn/model.pt" ] || timeout "${LONG_SECONDS:-500}" python3 -m micro.results \
                fit "$ds" --data "$data" --out "$dyn" --no_progress >> ".gpu-runs/$ds-dynamics.log" 2>&1
            tail -2 ".gpu-runs/$ds-dynamics.log"
            [ -f "$dyn/model.pt" ] || { echo "the dynamics fit goes on at the next call"; exit 0; }
            tar czf "$OUT/dynamics-$ds.tgz" --exclude writer.lock -C .gpu-runs "dyn-$ds"
        fi
        for algo in ${LONG_ALGOS:-micro mobile}; do  # the reference recipe: start, or continue
            timeout "${LONG_SECONDS:-500}" python3 -m micro.results train "$algo" "$ds" \
                --data "$data" --dynamics "$dyn" --logdir .gpu-runs/runs \
                --seeds ${LONG_SEEDS:-0 1 2} --no_progress >> ".gpu-runs/$ds-$algo.log" 2>&1 &
        done
        wait
        for algo in ${LONG_ALGOS:-micro mobile}; do
            tail -3 ".gpu-runs/$ds-$algo.log"
            for run in .gpu-runs/runs/$task/$algo/seed*; do
                [ -f "$run/checkpoints/last.pt" ] || continue
                [ -f "$run/policy.pt" ] || python3 -m micro.results export "$run" \
                    --out "$run/in-progress-policy.pt" | tail -1
                seed=$(basename "$run" | cut -d- -f1)
                (cd "$(dirname "$run")" && tar czf "$OUT/long-$algo-$seed.tgz" \
                    --exclude checkpoints --exclude dynamics "$(basename "$run")")
                rm -f "$run/in-progress-policy.pt"
            done
        done ;;
    *) echo "unknown part $w"; exit 2 ;;
    esac
  done
done
