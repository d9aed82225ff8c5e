#!/usr/bin/env bash
# Packs, for a GPU machine that has PyTorch but no network (this workplace's lent GPUs: Python 3.12, torch
# with CUDA 13), the Python packages flare_ray needs that its image lacks, as two xz tarballs, each small
# enough to travel with the working tree in one call (at most ~34 MiB; benchmarks/gpu/README.md):
#   .devbundle/base.tar.xz  everything but Ray (the first call's step benchmarks import no Ray);
#   .devbundle/ray.tar.xz   Ray (the second call's sweeps).
# Run here, where pip reaches PyPI, after `make setup`; check.sh extracts them into /tmp/site.
#
#   bash benchmarks/gpu/bundle.sh [HAVE_LIST]   # HAVE_LIST: package names the GPU machine already has
set -euo pipefail
cd "$(dirname "$0")/../.."
HAVE=${1:-benchmarks/gpu/device-packages.txt}
OUT=.devbundle; WORK=/tmp/flare_ray-devbundle
rm -rf "$OUT" "$WORK"; mkdir -p "$OUT" "$WORK/wheels" "$WORK/site"
norm() { tr 'A-Z_.' 'a-z--'; }
# What flare_ray's venv holds, less what the GPU machine has (torch, CUDA, numpy, pandas, pyarrow, ...).
# The Hugging Face stack travels anyway, at the versions the project is tested with (transformers 5 needs a
# newer huggingface-hub than the GPU machine's, 2026-12-04).
.venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e' | sed 's/ @ .*//' > "$WORK/freeze.txt"
norm < "$HAVE" | sort -u > "$WORK/have.txt"
while IFS== read -r name _ version; do
    n=$(echo "$name" | norm)
    case "$n" in torch|triton|nvidia-*|cuda-*|selenium|pytest*|pip|setuptools|sympy|networkx|mpmath) continue;; esac
    # the test and lint tools (moto and its CloudFormation linter, ruff, py-spy, virtualenv) and boto3 (S3 stores): no GPU trial needs them
    case "$n" in moto|cfn-lint|aws-sam-translator|ruff|py-spy|virtualenv|distlib|kubernetes-validate|boto3|botocore|s3transfer) continue;; esac
    case "$n" in responses|py-partiql-parser|joserfc|aws-xray-sdk|openapi-*|jsonschema-path|lazy-object-proxy|pathable|xmltodict) continue;; esac
    case "$n" in transformers|peft|huggingface-hub|hf-xet|tokenizers|safetensors|accelerate) always=1;; *) always=0;; esac
    if [ "$always" = 0 ] && grep -qx "$n" "$WORK/have.txt"; then continue; fi
    echo "$name==$version"
done < "$WORK/freeze.txt" > "$WORK/need.txt"
echo "packages to carry: $(wc -l < "$WORK/need.txt")"
P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp"
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64 linux_x86_64; do
    P="$P --platform $p"
done
missing=()
while read -r req; do
    python3 -m pip download -q $P -d "$WORK/wheels" "$req" >/dev/null 2>&1 || missing+=("$req")
done < "$WORK/need.txt"
for w in "$WORK"/wheels/*.whl; do python3 -m zipfile -e "$w" "$WORK/site"; done
# Pure-Python packages published only as source (deepspeed): the venv's installed copy.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for req in "${missing[@]}"; do
    name=${req%%==*}; mod=$(echo "$name" | tr 'A-Z-' 'a-z_')
    if [ -d "$SITE/$mod" ]; then cp -r "$SITE/$mod" "$WORK/site/"; cp -r "$SITE/$mod"-*.dist-info "$WORK/site/" 2>/dev/null || true
    else echo "not carried: $req"; fi
done
# What a headless GPU trial never loads: Ray's Java jar, dashboard front end and RLlib, MLflow's UI, the hub's
# Xet downloader (offline), bitsandbytes' other back ends.
S="$WORK/site"
rm -rf "$S"/ray/jars "$S"/ray/dashboard/client/build "$S"/ray/rllib "$S"/mlflow/server/js/build "$S"/bin "$S"/hf_xet*
find "$S/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cuda132*' ! -name '*cpu*' -delete 2>/dev/null || true
find "$S" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$WORK/base" "$WORK/ray"
mv "$S"/ray "$S"/ray-*.dist-info "$WORK/ray/"
mv "$S"/* "$WORK/base/"
for part in base ray; do
    (cd "$WORK/$part" && tar -cf - . | xz -7 -T2) > "$OUT/$part.tar.xz"
done
ls -la "$OUT"
for part in base ray; do
    size=$(stat -c %s "$OUT/$part.tar.xz")
    [ "$size" -le $((34 * 1024 * 1024)) ] || { echo "$part.tar.xz is $((size / 1048576)) MiB: over the ~34 MiB a call carries"; exit 1; }
done
