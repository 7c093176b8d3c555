#!/usr/bin/env bash
# The paper-size SpectraFM run on one GPU, inside 9 minutes of wall time (see scripts/gpu/README.md):
#   bash scripts/gpu/paper_scale.sh [OUTPUT_DIR] [extra paper_scale.py flags]
# The run needs neither datasets nor astropy. INSTALL_WHEELS=1 first installs the carried wheels (scripts/gpu/wheels/,
# made by fetch_wheels.sh) offline, for the rest of the package (readers, dataset builders); it takes ~15 s outside
# the run's budget.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/paper_scale_gpu}"
shift || true
PY="${PYTHON:-python}"
if ! "$PY" -c "import spectrafm_hf" 2>/dev/null; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ "${INSTALL_WHEELS:-0}" == 1 ]] && compgen -G "scripts/gpu/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --no-index --no-deps --quiet scripts/gpu/wheels/*.whl 
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # the observed-domain workers: one thread each
exec "$PY" scripts/gpu/paper_scale.py scripts/configs/paper_scale_gpu.yaml --output_dir "$OUT" "$@"
