#!/usr/bin/env bash
# The GPU checks of issue 13, as one script for a lent GPU machine (run in the repository root there):
#  1. the packages the machine lacks, from .devbundle (benchmarks/gpu/bundle.sh) into /tmp/site;
#  2. a decoder of Llama 3.2 1B's shape (benchmarks/gpu/decoder.py);
#  2b. LoRA and FLARE (cached and not) step time, tokens/s, peak memory and MFU in bf16 (benchmarks/gpu/mfu.py, issue 15);
#  3. QLoRA LoRA and FLARE trials through the sweep command (benchmarks/gpu/qlora-flare.yaml), then their
#     per-epoch tokens/s and peak GPU memory from MLflow;
#  4. a DeepSpeed ZeRO-3 trial (one GPU, NCCL) whose adapter-only checkpoint must load back.
# Everything it prints, and the logs, go to $OUT (default /tmp/flare-gpu/results).
set -uo pipefail
OUT=${OUT:-/tmp/flare-gpu/results}; mkdir -p "$OUT" /tmp/site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
if ls .devbundle/part-* >/dev/null 2>&1 && [ ! -e /tmp/site/.unpacked ]; then
    cat .devbundle/part-* | xz -d | tar -x -C /tmp/site && touch /tmp/site/.unpacked || { echo "bundle: unpack failed"; exit 3; }
fi
chmod +x /tmp/site/ray/core/src/ray/gcs/gcs_server /tmp/site/ray/core/src/ray/raylet/raylet  # wheels unzipped without modes
# Offline: transformers would fetch hub kernels (kernels-community/rotary) for Llama on CUDA, and fail.
export USE_HUB_KERNELS=NO
export PYTHONPATH=/tmp/site:$PWD
PY=python3
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c 'import torch, transformers, peft, ray, mlflow, optuna, bitsandbytes as bnb; print("torch", torch.__version__, torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__, "ray", ray.__version__, "mlflow", mlflow.__version__, "bnb", bnb.__version__)'
} 2>&1 | tee "$OUT/versions.txt"
step() { echo; echo "=== $1 ($(date +%T))"; }

step "decoder"
[ -d /tmp/llama-1b ] || $PY benchmarks/gpu/decoder.py /tmp/llama-1b --layers "${LAYERS:-16}" 2>&1 | tail -2

step "bf16 step time and MFU: LoRA, FLARE, FLARE cached (benchmarks/gpu/mfu.py)"
for batch in ${MFU_BATCHES:-32}; do
    timeout "${MFU_TIMEOUT:-150}" $PY benchmarks/gpu/mfu.py /tmp/llama-1b --batch "$batch" --json "$OUT/mfu-$batch.json" \
        > "$OUT/mfu-$batch.txt" 2>&1
    echo "exit status $?"; grep -v -E "Warning|warn|Loading" "$OUT/mfu-$batch.txt" | tail -8
done

[ "${ONLY:-}" = mfu ] && exit 0  # ONLY=mfu: the step-time check alone

step "QLoRA LoRA vs FLARE through python -m flare_ray.tune"
rm -rf /tmp/flare-gpu/out /tmp/flare-gpu/mlflow.db
timeout "${TUNE_TIMEOUT:-220}" $PY -m flare_ray.tune benchmarks/gpu/qlora-flare.yaml \
    --set model.name_or_path=/tmp/llama-1b ${TUNE_SET:-} > "$OUT/tune-console.txt" 2>&1
echo "exit status $?"; grep -E "epoch|done|FAILED|error" "$OUT/tune-console.txt" | head -20
$PY benchmarks/gpu/summary.py sqlite:////tmp/flare-gpu/mlflow.db gpu-qlora-flare 2>&1 | tee "$OUT/qlora-summary.txt"

if [ "${ZERO3:-1}" = 1 ]; then
    step "DeepSpeed ZeRO-3 (1 GPU) through python -m flare_ray.tune"
    timeout "${ZERO3_TIMEOUT:-150}" $PY -m flare_ray.tune benchmarks/gpu/qlora-flare.yaml \
        --set model.name_or_path=/tmp/llama-1b --set model.quantization=none --set name=gpu-zero3 \
        --set 'search.grid={method.kind: [flare]}' --set training.epochs=1 \
        --set 'scaling.deepspeed={zero_optimization: {stage: 3}}' > "$OUT/zero3-console.txt" 2>&1
    echo "exit status $?"; grep -E "epoch|done|FAILED|error" "$OUT/zero3-console.txt" | head -20
    $PY benchmarks/gpu/summary.py sqlite:////tmp/flare-gpu/mlflow.db gpu-zero3 2>&1 | tee "$OUT/zero3-summary.txt"
fi
tar -czf "$OUT/logs.tgz" -C /tmp/flare-gpu/out logs 2>/dev/null
