#!/usr/bin/env bash
# Issue 8's GPU runs, one stage per device call, from the repo root: `bash benchmarks/gpu/run.sh STAGE`.
#   tune     the 12-trial study (benchmarks/gpu/tune-llama1b.yaml); stopped with Ctrl-C semantics after
#            $TUNE_S seconds (default 450) so that the same stage run again resumes it
#   compare  the engine's defaults on the same workload (chat-default.yaml), then overhead.py
#   overhead overhead.py alone
#   multi    a study with two trial workers, one GPU each (needs 2 GPUs)
#   traffic  issue 4's real traffic: prefix caching off/on on RAG-style shared prefixes (rag-prefix.yaml, a
#            2-point grid), then the Azure code trace replayed 5x faster (code-trace.yaml)
# Needs the pure-Python wheels the GPU image lacks in .whl/ (benchmarks/gpu/README.md). Work stays in
# $WORK (default /tmp/gpu-work) between stages; each stage packs its part into $OUT/STAGE.tar.gz.
set -uo pipefail
stage=${1:?usage: run.sh tune|compare|overhead|multi|traffic}
out=${OUT:-$PWD/gpu-out}; work=${WORK:-/tmp/gpu-work}; mkdir -p "$out" "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HARNESS_CACHE=/tmp/harness-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
harness() { python3 -m harness "$@"; }
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  python3 -c "import platform, optuna, torch, transformers; print('python', platform.python_version(), 'torch',
torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'optuna', optuna.__version__)"
} > "$work/versions-$stage.txt" 2>&1
cat "$work/versions-$stage.txt"
case $stage in
  tune)
    timeout -s INT "${TUNE_S:-450}" python3 -m harness tune benchmarks/gpu/tune-llama1b.yaml --run-dir "$work/study" \
      > "$work/tune.log" 2>&1
    echo "tune exit $?"; tail -40 "$work/tune.log"
    parts="study tune.log"
    ;;
  compare)
    harness bench benchmarks/gpu/chat-default.yaml --out "$work/defaults" 2>&1 | tail -6
    python3 benchmarks/gpu/overhead.py --out "$work/overhead" --requests 256 --ttft-requests 48 2>&1 | tail -4
    parts="defaults overhead"
    ;;
  overhead)
    python3 benchmarks/gpu/overhead.py --out "$work/overhead" --requests 256 --ttft-requests 48 2>&1 | tail -4
    parts="overhead"
    ;;
  multi)
    timeout -s INT "${TUNE_S:-450}" python3 -m harness tune benchmarks/gpu/tune-llama1b.yaml --run-dir "$work/multi" \
      --gpus 0,1 --trials 4 > "$work/multi.log" 2>&1
    echo "tune exit $?"; tail -30 "$work/multi.log"
    parts="multi multi.log"
    ;;
  traffic)
    timeout -s INT "${TUNE_S:-330}" python3 -m harness tune benchmarks/gpu/rag-prefix.yaml --run-dir "$work/rag" \
      > "$work/rag.log" 2>&1
    echo "rag exit $?"; tail -12 "$work/rag.log"
    harness bench benchmarks/gpu/code-trace.yaml --out "$work/code-trace" > "$work/code-trace.log" 2>&1
    echo "code-trace exit $?"; tail -12 "$work/code-trace.log"
    parts="rag rag.log code-trace code-trace.log"
    ;;
esac
tar -C "$work" -czf "$out/$stage.tar.gz" $parts versions-$stage.txt
