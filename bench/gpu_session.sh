#!/usr/bin/env bash
# The GPU checks of the issue "Fast and faithful to the mixture", prepared for a session that is lent a device
# machine (an H200 here; any CUDA machine whose python3 has torch, transformers and accelerate will do).
#
#   bash bench/gpu_session.sh prepare   # here, where pip reaches the registries: wheels of what the machine lacks
#   bash bench/gpu_session.sh run OUT   # there (carry .whl): installs them, then the checks; figures under OUT
#
# `run` takes about 6 minutes on an H200: the segment attention's equality tests on the GPU, then
# bench/gpu_throughput.py (a T5 of t5-base size, bf16, packed rows against bucketed padding, model FLOPs
# utilisation) on the demo and the long-tailed profile, then the same under DeepSpeed ZeRO-2 on one GPU. Each step's
# output goes to OUT/NAME.log and its figures to OUT/NAME.json; a failing step does not stop the next.
set -u
cd "$(dirname "$0")/.."

# What the device image lacked on 2026-11-17 (/work/.library/device/KINDS.md) among t2t's imports at training
# time: datasets and its helpers, pydantic, DeepSpeed (an sdist: its wheel is built here, pure Python, its ops
# compiled on first use) and hjson.
WHEELS="datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5
annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0"
DEEPSPEED="deepspeed==0.19.8"

case "${1:-}" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS || exit 1
    DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps -w .whl "$DEEPSPEED" || exit 1
    ls -l .whl && du -sh .whl
    ;;
run)
    out="${2:?give the folder for the figures}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/device.txt" 2>&1
    python3 -c "import torch, transformers, accelerate, deepspeed; print(torch.__version__, \
transformers.__version__, accelerate.__version__, deepspeed.__version__)" >>"$out/device.txt" 2>&1
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_segment_attention.py \
        tests/test_packing_equivalence.py >"$out/equality.log" 2>&1
    echo "equality tests: exit $?" >>"$out/device.txt"
    for profile in demo long-tail; do
        timeout 300 python3 bench/gpu_throughput.py --profile "$profile" --out /tmp/gpu_bench \
            --json "$out/$profile.json" >"$out/$profile.log" 2>&1
        echo "$profile: exit $?" >>"$out/device.txt"
    done
    timeout 300 python3 -m accelerate.commands.launch --config_file launch/gpu_zero2.yaml --num_processes 1 \
        bench/gpu_throughput.py --profile demo --out /tmp/gpu_bench_zero2 --json "$out/zero2.json" \
        >"$out/zero2.log" 2>&1
    echo "zero2: exit $?" >>"$out/device.txt"
    cat "$out/device.txt"
    ;;
*)
    echo "usage: bash bench/gpu_session.sh prepare | run OUT" >&2
    exit 2
    ;;
esac
