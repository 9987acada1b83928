#!/usr/bin/env bash
# Every GPU check of issue 3 (and issue 5's CUDA error/OOM) in one run on a GPU machine, results
# under $OUT. Prepared on a machine without a GPU; see ../shared/gpu/README.md for the device tool.
#
#   here:    ../shared/gpu/fetch-wheels.sh scikit-learn scipy joblib threadpoolctl pytest-timeout
#   device:  run(command="<the install line fetch-wheels.sh printed> bash bench/gpu_check.sh",
#                carry=[".whl"], timeout_s=540)
#
# What it writes (each file also ends with its exit status):
#   versions.txt               nvidia-smi, torch and CUDA versions
#   pytest.txt                 tests/test_gpu.py + the trainer, probe and preset tests (their runs
#                              use the GPU by themselves: device="auto"), and a no-change fork on CUDA
#   probe_overhead.txt         bench/probe_overhead.py on CUDA (target: probe <= 1.05x)
#   trainer_vs_dataloader.txt  steps/s, built-in trainer vs a plain DataLoader loop (target >= 2x)
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

step() {  # step NAME TIMEOUT_S COMMAND...: run one check, keep going whatever it does
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "exit status $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt" "$OUT/summary.txt"
}

step versions 60 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'"
step pytest 240 "$PY" -m pytest -q -p no:cacheprovider -o addopts= -m "not browser and not screenshot" \
  tests/test_gpu.py tests/test_trainer.py tests/test_probe.py tests/test_presets.py \
  tests/test_forks.py::test_a_no_change_fork_of_a_diverging_run_judges_it_as_its_parent_did
step probe_overhead 150 "$PY" bench/probe_overhead.py --device cuda --threads 1 --clock wall --repeats 30
step trainer_vs_dataloader 90 "$PY" bench/trainer_vs_dataloader.py --device cuda --steps 500 --repeats 3
cat "$OUT/summary.txt"
