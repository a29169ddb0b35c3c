"""Start-up time of the command line: ``featviz --help`` and ``featviz VERB --help`` against
``python -c pass`` (median of N runs each, fresh processes), plus which heavy modules they load.

Target (layout issue): ``featviz --help`` within 0.3 s, with neither onnx, onnxruntime,
matplotlib nor numpy imported.

    python3 tools/bench/bench_cli_start.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("numpy", "onnx", "onnxruntime", "matplotlib", "PIL")
VERBS = ("info", "maps", "cam", "compare", "stats", "maximize")
PROBE = ("import sys, runpy; sys.argv = ['featviz', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('onnx_featviz', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")


def median_time(args: list[str], runs: int) -> float:
    """Median wall time of ``runs`` fresh processes running ``args``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_modules(verb_args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, *verb_args], check=True,
                          capture_output=True, text=True)
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    base = median_time([sys.executable, "-c", "pass"], runs)
    rows = [("python -c pass", base, "")]
    for verb in ("", *VERBS):
        args = [verb, "--help"] if verb else ["--help"]
        took = median_time([sys.executable, "-m", "onnx_featviz", *args], runs)
        rows.append((f"featviz {' '.join(args)}", took, heavy_modules(args) or "none"))
    print(f"{'command':28} {'median s':>9} {'vs python':>10} {'over python s':>14}  heavy modules")
    for name, took, heavy in rows:
        print(f"{name:28} {took:9.3f} {took / base:9.2f}x {took - base:14.3f}  {heavy}")


if __name__ == "__main__":
    main()
