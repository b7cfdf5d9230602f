#!/usr/bin/env bash
# Every GPU figure and GPU-only check in one run, for a GPU machine lent for a few minutes:
# bench/gpu.py at paper size (training step, online teacher, preprocess stages, M-TSA against
# dense TSA, sampling), then bench/gpu_smoke.py (tsa train on the GPU, FSDP2 on one rank).
# Each part has its own time limit, and what it printed is kept even when it runs out.
#
#     bash bench/gpu_all.sh OUT_DIR [GPU_PY_LIMIT_S] [SMOKE_LIMIT_S]
#
# tsa need not be installed: a copy of this checkout laid out as the package is put on PYTHONPATH
# (its third-party requirements must be importable).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bench/gpu_all.sh OUT_DIR [GPU_PY_LIMIT_S] [SMOKE_LIMIT_S]}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! python3 -c "import tsa.core, tsa.train" 2>/dev/null; then
    site="$(mktemp -d)"
    mkdir "$site/tsa"
    tar --exclude=./.git --exclude=./.whl --exclude=./tmp -cf - . | tar -xf - -C "$site/tsa"
    mv "$site/tsa/tsa_core" "$site/tsa/core"  # pyproject's package-dir: tsa_core installs as tsa.core
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export TSA_CACHE="${TSA_CACHE:-$(mktemp -d)}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
} 2>&1 | tee "$out/env.txt"
rc=0
timeout "${2:-400}" python3 bench/gpu.py --json "$out/gpu.json" 2>&1 | tee "$out/gpu.log" || rc=1
timeout "${3:-150}" python3 bench/gpu_smoke.py --json "$out/smoke.json" 2>&1 | tee "$out/smoke.log" || rc=1
exit "$rc"
