#!/usr/bin/env bash
# Prepare, on a machine that can reach a package index, the wheels bench/device_check.sh and
# bench/device_serve.sh install on a GPU host that has torch, Triton and the usual ML packages
# (numpy, einops, safetensors, sentencepiece, huggingface-hub, aiohttp, prometheus-client) but
# can fetch nothing: moshi (without its torch pin) and sphn, for one CPython (about 17 MB).
#   bench/device_wheels.sh [DEST] [PYTHON_VERSION] [MORE_PACKAGES...]
#   (defaults: .lab/device-wheels, 3.12; name a package the host lacks to add it)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.lab/device-wheels}
version=${2:-3.12}
pip=${PIP:-.venv/bin/pip}
echo "device_wheels: CPython $version into $dest"
"$pip" download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
  --python-version "$version" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --dest "$dest" moshi==0.2.13 "sphn>=0.2,<0.3" "${@:3}"
du -sh "$dest"
