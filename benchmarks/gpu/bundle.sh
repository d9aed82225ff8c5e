#!/usr/bin/env bash
# Packs, for a GPU machine that has PyTorch but no network (this workplace's lent H200: Python 3.12, torch
# with CUDA 13), the Python packages flare_ray needs that its image lacks, as xz tarballs small enough to
# travel with the working tree (at most ~34 MiB each): .devbundle/NN.tar.xz. Run here, where pip reaches
# PyPI, after `make setup`; on the GPU machine `benchmarks/gpu/unpack.sh` extracts them into /tmp/site.
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
# What a headless GPU trial never loads: Ray's Java jar and dashboard front end, bitsandbytes' other back ends.
S="$WORK/site"
rm -rf "$S"/ray/jars "$S"/ray/dashboard/client/build "$S"/bin
find "$S/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cuda132*' ! -name '*cpu*' -delete 2>/dev/null || true
find "$S" -name __pycache__ -prune -exec rm -rf {} +
# One xz stream cut into 30 MiB pieces: a call carries what fits beside the working tree, and the pieces
# already sent stay on a warm machine (benchmarks/gpu/README.md).
(cd "$S" && tar -cf - . | xz -9e -T2) | split -b 30M -d - "$OUT/part-"
ls -la "$OUT"
du -sh "$OUT"
