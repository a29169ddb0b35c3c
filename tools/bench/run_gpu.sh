#!/usr/bin/env bash
# One call on a GPU machine: the CUDA-vs-CPU tests (pytest -m gpu) and every benchmark's GPU rows.
# Usage (repo root, onnxruntime-gpu importable):  bash tools/bench/run_gpu.sh
# torch is imported first in each process so the CUDA/cuDNN libraries of its nvidia-* wheels are
# loaded before onnxruntime creates a CUDA session.
set -uo pipefail
cd "$(dirname "$0")/../.."
status=0
python -c "import sys, torch, pytest; sys.exit(pytest.main(['-q', '-m', 'gpu', '-rs', '-p', 'no:cacheprovider']))" || status=1
python tools/bench/bench_engine.py --reps 5 || status=1
python tools/bench/bench_render.py || status=1
python tools/bench/bench_cam.py || status=1
for bench in bench_audit_stats bench_audit_compare bench_synthesis; do
  [ -f "tools/bench/$bench.py" ] && { python "tools/bench/$bench.py" || status=1; }
done
exit $status
