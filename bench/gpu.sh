#!/usr/bin/env bash
# What a lent GPU machine runs for this project (README, "On a GPU"): the test suite on CUDA,
# our step and the published code's step timed in one command, a profile, and real runs.
#   bash bench/gpu.sh "tests speed profile train"   (default: "tests speed"; $OUT: where logs go)
# Wheels for packages the machine lacks are read from .whl/ (pip download on a networked
# machine), the published code from .ref/micro (git archive of xiaoyinliu0714/MICRO).
set -uo pipefail
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
        timeout ${TEST_TIMEOUT:-450} python3 -m pytest -o addopts= -v --tb=short -p no:cacheprovider -n 14 \
            tests > "$OUT/tests-all.log" 2>&1
        grep -E "FAILED|ERROR" "$OUT/tests-all.log" | grep -v "^FAILED\|^ERROR" | head -30
        grep -cE "PASSED" "$OUT/tests-all.log"; tail -3 "$OUT/tests-all.log" ;;
    speed)
        python3 bench/speed.py --device cuda --only step algo --json | tee "$OUT/speed.jsonl"
        python3 bench/speed.py --device cuda --only rollout dynamics --json | tee "$OUT/speed-fit.jsonl"
        python3 .ref/bench/ref_micro_speed.py --device cuda --ref .ref/micro --steps 200 \
            | tee "$OUT/ref-speed.txt" ;;
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
    *) echo "unknown part $w"; exit 2 ;;
    esac
  done
done
