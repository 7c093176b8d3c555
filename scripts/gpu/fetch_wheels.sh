#!/usr/bin/env bash
# Download, here, the wheels the GPU image lacks into scripts/gpu/wheels/ (git-ignored; carried to the GPU machine,
# e.g. run(..., carry=["scripts/gpu/wheels"])). The GPU run itself (paper_scale.py) needs none of them; they are for
# the rest of the package there (dataset builders: datasets; file readers: astropy; scipy where the image has none).
#   bash scripts/gpu/fetch_wheels.sh                 # CPython of this machine (3.11), manylinux x86_64
#   PY_VERSION=3.12 bash scripts/gpu/fetch_wheels.sh # another interpreter on the GPU machine
#   WITH_SCIPY=0 bash scripts/gpu/fetch_wheels.sh    # without scipy (~37 MB of the 64 MiB carry limit)
# Install there, offline:  pip install --no-index --no-deps scripts/gpu/wheels/*.whl
# Versions are those this project is tested with (its .venv). --no-deps: the image already has numpy, pandas,
# pyarrow, huggingface_hub, fsspec, pyyaml, packaging, tqdm, filelock.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
PY_VERSION="${PY_VERSION:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
        astropy==8.0.2 pyerfa==2.0.1.5 astropy-iers-data==0.2026.11.2.0.34.55)
if [[ "${WITH_SCIPY:-1}" == 1 ]]; then WHEELS+=(scipy==1.17.1); fi
mkdir -p wheels
"$PY" -m pip download --dest wheels --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any "${WHEELS[@]}"
du -ch wheels/*.whl | tail -1
