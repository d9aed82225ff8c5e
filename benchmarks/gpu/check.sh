#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine, in two calls that each carry one half of the package
# bundle (benchmarks/gpu/bundle.sh; README.md says how): 15 minutes of device time in all, at most 600 s a call.
#
#   PHASE=steps  (first call, carries .devbundle/base.tar.xz: all but Ray; CALL_SECONDS, default 330)
#     1. a decoder of Llama 3.2 1B's shape (decoder.py);
#     2. the MFU table (mfu.py): LoRA and FLARE cached, bf16, batch 32 of NusaX jav, as they run by default
#        and with each change of issue 31 on its own: length-grouped batches, padding-free batches, eager /
#        SDPA / FlashAttention 2, torch.compile;
#   PHASE=sweeps (second call, carries .devbundle/ray.tar.xz; CALL_SECONDS, default 480)
#     3. FLARE trials through `python -m flare_ray.tune` on one GPU: DeepSpeed ZeRO-3 (given up to 300 s),
#        ZeRO-2 and plain DDP: tokens/s and peak memory per epoch, from MLflow (one Ray cluster for all);
#     4. the QLoRA sweep (qlora-flare.yaml, LoRA and FLARE): its goodput and per-epoch figures;
#   then report.py writes $OUT/RESULTS-gpu.md, the section for benchmarks/RESULTS.md.
# Every step is time-boxed to what the call has left; what did not fit is said in the section.
set -uo pipefail
PHASE=${PHASE:-steps}
OUT=${OUT:-/tmp/flare-gpu/results}; mkdir -p "$OUT" /tmp/site /tmp/flare-gpu
STARTED=$(date +%s)
case "$PHASE" in steps) CALL_SECONDS=${CALL_SECONDS:-330};; *) CALL_SECONDS=${CALL_SECONDS:-480};; esac
left() { echo $(( CALL_SECONDS - 15 - ($(date +%s) - STARTED) )); }  # 15 s kept for the report
box() { local want=$1 have; have=$(left); [ "$have" -lt "$want" ] && want=$have; echo $(( want > 0 ? want : 0 )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
# Offline: transformers would fetch hub kernels (kernels-community/rotary) for Llama on CUDA, and fail.
export USE_HUB_KERNELS=NO
export PYTHONPATH=/tmp/site:$PWD
PY=python3
unpack() {
    [ -e "/tmp/site/.$1" ] && return 0
    [ -e ".devbundle/$1.tar.xz" ] || { echo "bundle: .devbundle/$1.tar.xz was not carried"; exit 3; }
    xz -dc ".devbundle/$1.tar.xz" | tar -x -C /tmp/site && touch "/tmp/site/.$1" || { echo "bundle: unpack $1 failed"; exit 3; }
}
step() { echo; echo "=== $1 ($(date +%T), $(left) s left)"; }

[ "$PHASE" = none ] && { unpack base; exit 0; }  # the base again, on a machine that went back in between
if [ "$PHASE" = steps ]; then
    unpack base
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      $PY -c 'import torch, transformers, peft; print("torch", torch.__version__, torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)'
      $PY -c 'import flash_attn; print("flash_attn", flash_attn.__version__)' 2>/dev/null || echo "flash_attn: not installed"
    } 2>&1 | tee "$OUT/versions.txt"

    step "decoder"
    [ -d /tmp/llama-1b ] || $PY benchmarks/gpu/decoder.py /tmp/llama-1b --layers "${LAYERS:-16}" 2>&1 | tail -2

    step "bf16 MFU table: LoRA and FLARE cached, each change on its own (mfu.py)"
    timeout "$(box 600)" $PY benchmarks/gpu/mfu.py /tmp/llama-1b --batch "${MFU_BATCH:-32}" --steps "${MFU_STEPS:-8}" \
        --methods lora flare_cached --variants default group_by_length padding_free padding_free_flash eager flash_attention_2 compile \
        --json "$OUT/mfu.json" > "$OUT/mfu.txt" 2>&1
    echo "exit status $?"; grep -v -E "Warning|warn|Loading" "$OUT/mfu.txt" | tail -25
    $PY benchmarks/gpu/report.py "$OUT" > "$OUT/RESULTS-gpu.md" 2>"$OUT/report.log"; echo "section: $OUT/RESULTS-gpu.md"
    exit 0
fi

unpack base
unpack ray
chmod +x /tmp/site/ray/core/src/ray/gcs/gcs_server /tmp/site/ray/core/src/ray/raylet/raylet  # wheels unzipped without modes
$PY -c 'import ray, mlflow, bitsandbytes as bnb, deepspeed; print("ray", ray.__version__, "mlflow", mlflow.__version__, "bnb", bnb.__version__, "deepspeed", deepspeed.__version__)' 2>&1 | tee -a "$OUT/versions.txt"
[ -d /tmp/llama-1b ] || $PY benchmarks/gpu/decoder.py /tmp/llama-1b --layers "${LAYERS:-16}" 2>&1 | tail -2

step "one Ray cluster for every sweep of this call"
RAY_CLI=($PY -c 'from ray.scripts.scripts import main; main()')  # `ray` (the bundle has no bin/)
timeout 120 "${RAY_CLI[@]}" start --head --node-ip-address 127.0.0.1 --port 6379 --num-gpus 1 --disable-usage-stats \
    > "$OUT/ray-start.txt" 2>&1
status=$?; echo "exit status $status"
[ "$status" = 0 ] && export RAY_ADDRESS=127.0.0.1:6379  # else each sweep starts its own Ray
rm -rf /tmp/flare-gpu/out /tmp/flare-gpu/mlflow.db
tune() {  # tune NAME SECONDS --set ...: one FLARE sweep of the check's config, time-boxed
    local name=$1 seconds; seconds=$(box "$2"); shift 2
    step "$name through python -m flare_ray.tune (${seconds} s)"
    [ "$seconds" -lt 30 ] && { echo "skipped: no time left" | tee "$OUT/$name-console.txt"; return; }
    timeout "$seconds" $PY -m flare_ray.tune benchmarks/gpu/qlora-flare.yaml --set model.name_or_path=/tmp/llama-1b \
        --set name="$name" "$@" > "$OUT/$name-console.txt" 2>&1
    echo "exit status $?" | tee -a "$OUT/$name-console.txt"; grep -E "epoch|done|FAILED|rror|goodput" "$OUT/$name-console.txt" | head -12
}
ONE_FLARE=(--set model.quantization=none --set 'search.grid={method.kind: [flare]}' --set training.epochs=1
           --set 'task.max_records={train: 320, validation: 64, test: 64}')
tune gpu-zero3 300 "${ONE_FLARE[@]}" --set 'scaling.deepspeed={zero_optimization: {stage: 3}}'
tune gpu-zero2 120 "${ONE_FLARE[@]}" --set 'scaling.deepspeed={zero_optimization: {stage: 2}}'
tune gpu-ddp 90 "${ONE_FLARE[@]}"
tune gpu-qlora-flare 240
$PY benchmarks/gpu/report.py "$OUT" sqlite:////tmp/flare-gpu/mlflow.db > "$OUT/RESULTS-gpu.md" 2>"$OUT/report.log"
echo "section: $OUT/RESULTS-gpu.md"; cat "$OUT/RESULTS-gpu.md" | tail -30
"${RAY_CLI[@]}" stop --force >/dev/null 2>&1 || true
tar -czf "$OUT/logs.tgz" -C /tmp/flare-gpu/out logs 2>/dev/null || true
