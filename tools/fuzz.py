"""Fuzz the model and image loaders for N minutes; report every non-FeatvizError outcome.

Usage::

    python3 tools/fuzz.py --minutes 10 --target model --out fuzz-out [--seed 0]
    python3 tools/fuzz.py --replay fuzz-out/model/failures/001   # re-run one reproducer

Cases come from ``tools/fuzz_cases.py`` and ``tools/fuzz_images.py`` (the mutators the tests
use), generated from ``random.Random(f"{seed}-{target}-{index}")``, so case ``i`` is the same on
every run. They run in a child process per batch of cases, with an RLIMIT_AS cap of
``--mem-gib`` above its start-up size and a per-case timeout: a case over time is a ``hang``, a
child that dies is a ``crash``. Failures are deduplicated by (exception type, innermost frame);
each distinct one is saved with its input files under ``OUT/TARGET/failures/NNN`` and listed in
``OUT/TARGET/report.md`` (and ``report.json``).
Torch is never imported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools` and the worktree's package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ("model", "image")
#: ``harness``: the mutator itself failed (a bug in tools/fuzz_cases.py, not in the package).
OUTCOMES = ("ok", "error", "traceback", "hang", "crash", "harness")
_SETUP_S = 60.0


def chooser(seed: int, target: str, index: int) -> Any:
    """Return the deterministic chooser of case ``index``."""
    rnd = random.Random(f"{seed}-{target}-{index}")
    return lambda n: rnd.randrange(n) if n > 0 else 0


def write_case(target: str, seed: int, index: int, folder: Path) -> tuple[Path, str]:
    """Write case ``index`` of ``target`` under ``folder``; return (entry path, label)."""
    from tools import fuzz_cases, fuzz_images

    choose = chooser(seed, target, index)
    if target == "model":
        return fuzz_cases.write_model_case(folder, choose)
    return fuzz_images.write_image_case(folder, choose)


def run_entry(target: str, path: Path, on_step: Any = None) -> Any:
    """Run the loader calls of ``target`` on ``path``; return a ``fuzz_cases.Outcome``."""
    from tools import fuzz_cases

    steps = fuzz_cases.model_steps(path) if target == "model" else fuzz_cases.image_steps(path)
    return fuzz_cases.run_steps(steps, on_step)


# -- child ------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> int:
    """Run cases ``start..start+count-1``, one JSON line per event on the protocol fd."""
    import resource

    from tools import fuzz_cases

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    log = os.open(Path(args.scratch) / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if args.target == "image":
        fuzz_cases._image_inspector()  # warm up before the cap, as the model target's imports
    cap = fuzz_cases.vm_size() + int(args.mem_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))

    def send(**event: Any) -> None:
        proto.write(json.dumps(event) + "\n")

    for index in range(args.start, args.start + args.count):
        folder = Path(tempfile.mkdtemp(dir=args.scratch))
        send(case=index, event="start")
        try:
            try:
                path, label = write_case(args.target, args.seed, index, folder)
            except Exception as err:  # noqa: BLE001 - reported as a harness bug
                send(case=index, event="done", label="", outcome="harness",
                     step="write_case", key=fuzz_cases.failure_key(err), detail=repr(err))
                continue
            result = run_entry(args.target, path,
                               lambda step, i=index: send(case=i, event="step", step=step))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        send(case=index, event="done", label=label, outcome=result.outcome, step=result.step,
             key=result.key, detail=result.detail)
    return 0


# -- parent -----------------------------------------------------------------------------------
@dataclass
class Failure:
    key: str
    outcome: str
    step: str
    first_case: int
    label: str
    detail: str
    count: int = 0
    folder: str = ""


@dataclass
class Run:
    target: str
    seed: int
    out: Path
    counts: Counter[str] = field(default_factory=Counter)
    failures: dict[str, Failure] = field(default_factory=dict)
    cases: int = 0

    def record(self, index: int, event: dict[str, Any]) -> None:
        self.cases += 1
        outcome = str(event["outcome"])
        self.counts[outcome] += 1
        if outcome in ("ok", "error"):
            return
        key = f"{outcome}: {event['key']}"
        failure = self.failures.get(key)
        if failure is None:
            failure = Failure(key, outcome, str(event.get("step", "")), index,
                              str(event.get("label", "")), str(event.get("detail", "")))
            if outcome != "harness":
                failure.folder = save_reproducer(self, failure, len(self.failures) + 1)
            self.failures[key] = failure
        failure.count += 1


def save_reproducer(run: Run, failure: Failure, number: int) -> str:
    """Regenerate the failing case into ``out/failures/NNN`` with a ``failure.json``."""
    folder = run.out / "failures" / f"{number:03d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    entry, label = write_case(run.target, run.seed, failure.first_case, folder / "case")
    meta = {"target": run.target, "seed": run.seed, "case": failure.first_case,
            "entry": str(entry.relative_to(folder)) if entry.is_relative_to(folder)
            else str(entry), "label": label, "key": failure.key, "step": failure.step,
            "detail": failure.detail,
            "replay": f"python3 tools/fuzz.py --replay {folder}"}
    (folder / "failure.json").write_text(json.dumps(meta, indent=2) + "\n")
    return str(folder)


def _spawn(args: argparse.Namespace, start: int, count: int, scratch: Path
           ) -> subprocess.Popen[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--target",
               args.target, "--seed", str(args.seed), "--start", str(start), "--count",
               str(count), "--scratch", str(scratch), "--mem-gib", str(args.mem_gib)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)


def _kill(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def run_batch(args: argparse.Namespace, run: Run, start: int, deadline: float,
              scratch: Path) -> int:
    """Run one child from case ``start``; return the next case index."""
    count = args.batch if not args.max_cases else min(args.batch, args.max_cases - run.cases)
    proc = _spawn(args, start, count, scratch)
    try:
        return _follow(args, run, proc, start, count, deadline, scratch)
    finally:
        _kill(proc)  # also on Ctrl-C or an error here: never leave a worker behind


def _follow(args: argparse.Namespace, run: Run, proc: subprocess.Popen[str], start: int,
            count: int, deadline: float, scratch: Path) -> int:
    """Read the worker's events until it finishes, hangs, dies or the deadline passes."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    current, step = start, ""
    started = time.monotonic() + _SETUP_S  # imports and warm-up are not the first case's time
    while True:
        if not selector.select(timeout=max(0.0, started + args.case_timeout - time.monotonic())):
            _kill(proc)
            run.record(current, {"outcome": "hang", "key": f"step {step or 'setup'}",
                                 "step": step, "detail": f"over {args.case_timeout} s"})
            return current + 1
        line = proc.stdout.readline()
        if not line:
            code = _kill(proc)
            if current >= start + count:
                return current
            run.record(current, {"outcome": "crash", "key": f"exit {code} in step {step}",
                                 "step": step, "detail": _tail(scratch / "worker.log")})
            return current + 1
        event = json.loads(line)
        if event["event"] == "start":
            current, step, started = int(event["case"]), "", time.monotonic()
            if time.monotonic() > deadline:
                _kill(proc)
                return -1
        elif event["event"] == "step":
            step = str(event["step"])
        else:
            run.record(current, event)
            current += 1


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def fuzz_target(args: argparse.Namespace, target: str) -> Run:
    """Fuzz one target for ``args.minutes``."""
    args.target = target
    run = Run(target, args.seed, Path(args.out) / target)
    run.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.minutes * 60
    index = 0
    with tempfile.TemporaryDirectory(prefix=f"featviz-fuzz-{target}-") as scratch:
        while index >= 0 and time.monotonic() < deadline and (
                not args.max_cases or run.cases < args.max_cases):
            index = run_batch(args, run, index, deadline, Path(scratch))
    write_report(run, args)
    return run


def write_report(run: Run, args: argparse.Namespace) -> None:
    """Write ``report.json`` and ``report.md`` under the target's output folder."""
    failures = sorted(run.failures.values(), key=lambda f: -f.count)
    data = {"target": run.target, "seed": run.seed, "minutes": args.minutes,
            "cases": run.cases, "outcomes": {k: run.counts.get(k, 0) for k in OUTCOMES},
            "failures": [f.__dict__ for f in failures]}
    (run.out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# fuzz {run.target}: seed {run.seed}, {args.minutes} min, {run.cases} cases", "",
             " ".join(f"{k} {run.counts.get(k, 0)}" for k in OUTCOMES), "",
             f"{len(failures)} distinct failures"]
    for f in failures:
        lines += ["", f"- {f.key} (x{f.count}, step {f.step}, first case {f.first_case}, "
                      f"{f.label}) -> {f.folder}"]
    (run.out / "report.md").write_text("\n".join(lines) + "\n")


def replay(folder: Path) -> int:
    """Re-run a saved reproducer in this process and print the outcome and traceback."""
    meta = json.loads((folder / "failure.json").read_text())
    entry = Path(meta["entry"])
    result = run_entry(meta["target"], entry if entry.is_absolute() else folder / entry)
    print(f"{result.outcome} {result.step} {result.key}\n{result.detail}")
    return 0 if result.outcome in ("ok", "error") else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="per target")
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"))
    parser.add_argument("--case-timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("--mem-gib", type=float, default=2.0, help="RLIMIT_AS above start-up")
    parser.add_argument("--batch", type=int, default=200, help="cases per child process")
    parser.add_argument("--max-cases", type=int, default=0, help="stop after N cases per target")
    parser.add_argument("--replay", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.replay is not None:
        return replay(args.replay)
    runs = [fuzz_target(args, t) for t in (TARGETS if args.target == "all" else (args.target,))]
    for run in runs:
        counts = ", ".join(f"{k} {run.counts.get(k, 0)}" for k in OUTCOMES)
        print(f"{run.target}: {run.cases} cases ({counts}); {len(run.failures)} distinct "
              f"failures; report {run.out / 'report.md'}")
    return 1 if any(run.failures for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
