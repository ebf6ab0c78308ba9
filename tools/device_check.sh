#!/usr/bin/env bash
# Every check that needs a GPU, in one run of a lent machine (its time is short and each start
# costs minutes). From the repository root:
#
#     bash tools/device_check.sh [test] [sanitize] [bench] [profile] [wheel]   # default: all five
#
# The CUDA build (with the seed plugins) runs first, then, in order of what matters most and
# none stopping the next: `pytest -m cuda` (test); compute-sanitizer memcheck and racecheck over
# tools/sanitize_ops.py (sanitize); the op benchmarks, the training step and one recipe per seed
# plugin against a hand loop (bench); the goal cases of each op under torch.profiler, and under
# Nsight Compute where `ncu` is installed and may read the counters (profile): what limits a
# kernel that misses its goal; the CUDA wheel installed into a fresh environment and
# `pytest -m cuda` over the op tests from that installed copy (wheel). Naming groups runs only
# those: a second call on the warm machine for what the first ran out of time for (ninja keeps
# build/, so the build is quick then).
#
# BUDGET_S (default 540) bounds the whole run, inside the device tool's 600 s a command: each
# step gets at most its own limit and what is left, and one with under 20 s left is skipped (the
# summary says so), so the results always come back. OUT (default build/device-check) receives
# at most 7 files: summary.txt (each step's status and time, sanitizer summaries, test tails,
# profile headlines), logs.tar.gz (every log in full: the profiles' kernel tables) and
# <gpu>_<bench>.json per benchmark, as in benchmarks/results/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-build/device-check}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
T0=$(date +%s)
mkdir -p "$OUT"
LOGS=$(mktemp -d)
SUMMARY="$OUT/summary.txt"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z' 'a-z' | grep -o 'h[0-9]\+\|a[0-9]\+\|l[0-9]\+' | head -1)
gpu=${gpu:-gpu}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1; } > "$SUMMARY"

# step NAME SECONDS CMD...: runs CMD with a time limit, its output to NAME.log; the status to the summary.
step() {
  local name=$1 limit=$2 start rc left
  shift 2
  start=$(date +%s)
  left=$(( BUDGET_S - (start - T0) ))
  if (( left < 20 )); then
    printf '%-18s skipped: out of time (BUDGET_S=%s)\n' "$name" "$BUDGET_S" | tee -a "$SUMMARY"
    return 124
  fi
  timeout "$(( limit < left ? limit : left ))" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  printf '%-18s rc=%-3s %4ss\n' "$name" "$rc" "$(( $(date +%s) - start ))" | tee -a "$SUMMARY"
  return $rc
}

WANT=" ${*:-test sanitize bench profile wheel} "
wants() { [[ $WANT == *" $1 "* ]]; }

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PLUGINS=(-e plugins/alignment -e plugins/dualpath -e plugins/mlimages -e plugins/multigrain)
if ! step build 240 env FUSEDEMBED_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e . "${PLUGINS[@]}"; then
  tail -30 "$LOGS/build.log" >> "$SUMMARY"
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
  exit 1
fi
$PY -c "import fusedembed; print(fusedembed.build_info())" >> "$SUMMARY" 2>&1

if wants test; then
  step pytest_cuda 150 $PY -m pytest -m cuda -q -p no:cacheprovider tests plugins
  tail -3 "$LOGS/pytest_cuda.log" >> "$SUMMARY"
fi
if wants sanitize; then
  for tool in memcheck racecheck; do
    step "$tool" 90 compute-sanitizer --tool "$tool" --error-exitcode 3 $PY tools/sanitize_ops.py --device cuda
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|MISMATCH|all kernels match|not supported" "$LOGS/$tool.log" >> "$SUMMARY"
  done
fi
if wants bench; then
  for bench in gem_pool sampled_sigmoid_loss mrf_viterbi train_step; do
    step "bench_$bench" 150 $PY benchmarks/bench_$bench.py --device cuda --json "$OUT/${gpu}_$bench.json"
    grep -E "overhead|TB/s" "$LOGS/bench_$bench.log" | head -5 >> "$SUMMARY"
  done
  step bench_recipes 150 $PY benchmarks/bench_train_step.py --device cuda --recipe plugins --steps 300 --runs 2 \
    --json "$OUT/${gpu}_train_step_recipes.json"
  grep -E "overhead|skipped|failed" "$LOGS/bench_recipes.log" >> "$SUMMARY"
fi
# The cases with speed goals (GeM 256x2048x7x7 fp32 fwd and fwd+bwd, bf16 NCHW fwd+bwd; the sampled
# loss at 4096x11166 fp32; Potts Viterbi at B=65536 N=16 M=20, the CRF at M=256): each
# implementation's kernels and host ops per call, then each fusedembed kernel's speed-of-light,
# memory and occupancy figures.
if wants profile; then
  step profile_gem 120 $PY benchmarks/bench_gem_pool.py --device cuda --repeats 5 --profile \
    --case "(256, 2048, 7, 7) float32 nchw" --case "(256, 2048, 7, 7) bfloat16 nchw"
  step profile_loss 90 $PY benchmarks/bench_sampled_sigmoid_loss.py --device cuda --repeats 5 --profile \
    --case "4096x11166 float32"
  step profile_viterbi 90 $PY benchmarks/bench_mrf_viterbi.py --device cuda --repeats 5 --profile \
    --case "mrf B=65536 N=16 M=20" --case "crf B=1024 N=30 M=256"
  for log in profile_gem profile_loss profile_viterbi; do
    grep "^profile " "$LOGS/$log.log" >> "$SUMMARY"
  done
  if command -v ncu > /dev/null; then
    NCU=(ncu --kernel-name-base demangled -k regex:fusedembed --section SpeedOfLight --section MemoryWorkloadAnalysis
         --section Occupancy --section LaunchStats)
    step ncu_gem 60 "${NCU[@]}" -c 4 $PY benchmarks/bench_gem_pool.py --device cuda --repeats 1 --only fusedembed \
      --case "fwd+bwd (256, 2048, 7, 7) bfloat16 nchw"
    step ncu_loss 60 "${NCU[@]}" -c 6 $PY benchmarks/bench_sampled_sigmoid_loss.py --device cuda --repeats 1 \
      --only fusedembed --case "4096x11166 float32"
    step ncu_viterbi 60 "${NCU[@]}" -c 2 $PY benchmarks/bench_mrf_viterbi.py --device cuda --repeats 1 \
      --only fusedembed --case "mrf B=65536 N=16 M=20"
    for log in ncu_gem ncu_loss ncu_viterbi; do
      grep -E "fusedembed::|^ *(Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy) |ERR_" \
        "$LOGS/$log.log" | head -40 >> "$SUMMARY"
    done
  else
    echo "ncu                not installed: torch.profiler only" >> "$SUMMARY"
  fi
fi

# The CUDA wheel, from an environment that sees this machine's torch but not the editable install
# (a bare path in a .pth joins sys.path; the .pth files inside it, the editable finder's, do not run).
if wants wheel && step wheel 120 env FUSEDEMBED_CUDA=1 $PY -m pip wheel --no-build-isolation --no-deps -w "$LOGS/wheel" .; then
  env_dir=$(mktemp -d)
  $PY -m venv --without-pip "$env_dir"
  site=$("$env_dir/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  $PY -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))" \
    > "$site/shared_deps.pth"
  $PY -m pip install -q --no-deps --target "$site" "$LOGS"/wheel/fusedembed-*.whl
  ls "$LOGS"/wheel >> "$SUMMARY"
  step wheel_pytest 90 bash -c "cd '$env_dir' && '$env_dir/bin/python' -c 'import fusedembed; print(fusedembed.build_info())' \
    && '$env_dir/bin/python' -m pytest -m cuda -q -p no:cacheprovider '$PWD'/tests/ops"
  { head -1 "$LOGS/wheel_pytest.log"; tail -3 "$LOGS/wheel_pytest.log"; } >> "$SUMMARY"
fi
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" --exclude ./wheel .
echo "total $(( $(date +%s) - T0 ))s" >> "$SUMMARY"
cat "$SUMMARY"
