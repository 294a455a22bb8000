#!/usr/bin/env bash
# The GPU check of issue 16, as one prepared script (about 4 minutes on one GPU):
#   1. the test suite's device and data-parallel tests (the CUDA ones skip without a GPU);
#   2. MMoE and PLE training throughput at the paper and large sizes, polytask beside
#      torch-rechub 0.9.0 on the same device (benchmarks/throughput_archs.py --device);
#   3. one balancing method's step cost there (UPGrad, MMoE paper size, beside equal weighting
#      in step 2).
# It runs on a CPU-only machine too: step 1 runs what needs no GPU, steps 2 and 3 are skipped
# with a line saying so. torch-rechub comes with `make bench` (the bench extra); without it
# steps 2 and 3 are skipped as well. Census-Income is read from ../shared/datasets when it is
# there, else the shipped sample is used (and the JSON says which).
#
#   bash benchmarks/gpu_check.sh            # writes docs/results/gpu_*.json on a GPU
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-docs/results}
status=0

echo "== 1. device and data-parallel tests"
"$PYTHON" -m pytest tests/train/test_device.py tests/train/test_distributed.py -q -rs \
    -k "not killed" -p no:cacheprovider || status=1

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "== 2, 3. skipped: this machine has no CUDA GPU (torch.cuda.is_available() is False)"
    exit $status
fi
if ! "$PYTHON" -c "import torch_rechub" 2>/dev/null; then
    echo "== 2, 3. skipped: torch-rechub is not installed (make bench installs it)"
    exit $status
fi
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(0))"
DATA=()
if [ ! -d ../shared/datasets/census_income_kdd ]; then
    echo "   Census-Income not found under ../shared/datasets: the shipped sample is used"
    DATA=(--sample)
fi
cd benchmarks
echo "== 2. MMoE and PLE throughput on cuda, polytask beside torch-rechub"
"$PYTHON" throughput_archs.py "${DATA[@]}" --device cuda --batch-size 4096 --seconds 12 \
    --rounds 3 --warmup 5 --json "../$OUT/gpu_throughput.json" || status=1
echo "== 3. a balancing method's step cost on cuda: UPGrad (exact), MMoE paper size"
"$PYTHON" throughput_archs.py "${DATA[@]}" --device cuda --batch-size 4096 --seconds 6 \
    --rounds 3 --warmup 5 --archs mmoe --sizes paper --balance upgrad \
    --json "../$OUT/gpu_balance_upgrad.json" || status=1
exit $status
