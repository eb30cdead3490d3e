#!/usr/bin/env bash
# Prepare, on a machine that can reach a package index, the wheels bench/device_check.sh installs
# on a GPU host that has torch and Triton but can fetch nothing: moshi (without its torch pin),
# sphn and what moshi imports, for CPython 3.10 to 3.12 on x86_64 Linux (about 40 MB).
#   bench/device_wheels.sh [DEST]      (default .lab/device-wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.lab/device-wheels}
pip=${PIP:-.venv/bin/pip}
# moshi's own pins, as the moshi role installs them (roles/moshi/defaults/main.yml).
packages=(moshi==0.2.13 "einops==0.8.*" "safetensors>=0.4.0,<0.8" "sentencepiece==0.2.*"
  "huggingface-hub>=0.24,<1.0" "sphn>=0.2,<0.3" filelock fsspec packaging pyyaml requests tqdm
  typing_extensions hf-xet certifi charset-normalizer idna urllib3)
for version in 3.10 3.11 3.12; do
  echo "device_wheels: CPython $version"
  "$pip" download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    --python-version "$version" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --dest "$dest" "${packages[@]}"
done
du -sh "$dest"
