"""The ``ray`` engine of ``stats`` and ``compare``: DATA cut into work units (whole batches),
each streamed by an actor that holds the onnxruntime sessions, merged in a fixed order on the
driver.

The only importer of ``ray``; ``audit.stats`` and ``audit.compare`` import this module only when
``engine="ray"``. What runs where:

- the driver lists DATA (folder listing, or headers only) and cuts its inputs into units of
  whole batches (``work_units``);
- ``.npy``/``.npz`` and MNIST IDX files (a local path, a URI or a path on a pyarrow
  filesystem): ``workers`` Ray actors (``ray.remote``, restarted and their calls retried
  after a crash) are started before the driver plans, so that their start (importing the
  package, opening the sessions) overlaps the planning; the driver then feeds each ready
  actor ranges of rows, two in flight, which it streams with ``io.data.open_data(rows=...)``
  (the local engine's reading, skipping and preprocessing);
- image files (a local file or folder, a URI such as ``s3://bucket/val``, or a path on a
  pyarrow filesystem): Ray's file reader (``ray.data.read_binary_files``, kept in order and cut
  into blocks of one unit each) mapped by an actor pool (``Dataset.map_batches``); an actor
  decodes its unit's files with the local engine's decoder (``io.filesystems.image_stream``);
- every actor holds one ``Inspector`` per model (CUDA when ``gpus_per_worker`` > 0, CPU with
  one onnxruntime thread otherwise) and runs the engine's per-batch step on each batch (the
  same function the local engine calls), returning the batch partials, the inputs it skipped
  and its providers;
- the driver takes the units as they finish, ignores a unit it already has, and folds the
  partials unit by unit in DATA order, so the result does not depend on scheduling and the
  driver holds only the units that finished early; the actors are killed when the run ends.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import onnx
from numpy.typing import NDArray

import onnx_featviz.inspector as inspection
import onnx_featviz.runtime as runtime
from onnx_featviz.audit.compare import RayOptions
from onnx_featviz.errors import FeatvizError, InputError, ProviderError
from onnx_featviz.io import data as api_data
from onnx_featviz.io import filesystems
from onnx_featviz.structs import Progress, ProgressFn

log = logging.getLogger(__name__)

T = TypeVar("T")
INSTALL_HINT = 'pip install "onnx-featviz[ray]"'
#: Most batches in one work unit: enough to amortize a task, few enough for a steady progress
#: bar and a short retry after an actor dies.
UNIT_BATCHES = 16
#: Work units per worker at least, so that workers finishing early find more work.
UNITS_PER_WORKER = 4

Step = Callable[[Sequence[inspection.Inspector], NDArray[np.generic]], Any]
"""The engine's per-batch step: the model inspectors and one batch to a mergeable partial."""
Sessions = Callable[[Sequence[inspection.Inspector]], tuple[tuple[str, ...], ...]]
"""The providers in use per model (after the step ran once)."""


@dataclass(frozen=True, slots=True)
class Job(Generic[T]):
    """What the actors compute and how the driver folds it.

    ``step`` and ``sessions`` run in the actors (module-level functions, or ``functools.partial``
    of them, so that they pickle); ``fold(total, partial)`` runs on the driver, batch by batch in
    DATA order, starting from ``initial``.
    """

    step: Step
    sessions: Sessions
    fold: Callable[[T, Any], T]
    initial: T


@dataclass(frozen=True, slots=True)
class RayRun(Generic[T]):
    """The folded result of a ``run_job``.

    Attributes:
        value: ``fold`` over every batch of every finished range, in DATA order.
        images: inputs folded in; skipped: ``(source, reason)`` per unreadable input;
        partial: interrupted (Ctrl-C): ``value`` covers the first ``images`` inputs only;
        providers: per model, the providers the actors' sessions use.
    """

    value: T
    images: int
    skipped: tuple[tuple[str, str], ...]
    partial: bool
    providers: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class _UnitResult:
    """What an actor returns for one range: ``(rows, partial)`` per batch, in order."""

    parts: tuple[tuple[int, Any], ...]
    skipped: tuple[tuple[str, str], ...]
    done: int
    providers: tuple[tuple[str, ...], ...]


def import_ray(*, data: bool = False) -> Any:
    """Return the ``ray`` module, with ``ray.data`` loaded when ``data`` (image files only:
    importing it takes about 0.5 s).

    Raises:
        InputError: Ray is not installed (one line naming the install command).
    """
    try:
        import ray

        if data:
            import ray.data  # noqa: F401  (the Dataset API is a submodule)
    except ImportError as err:
        raise InputError(f"the ray engine needs Ray, which is not installed ({err}); "
                         f"install it with: {INSTALL_HINT}") from err
    return ray


def work_units(total: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """Cut inputs ``[0, total)`` into ranges of whole batches, in order.

    Each range holds ``k * batch_size`` inputs (the last one fewer), with ``k`` between 1 and
    ``UNIT_BATCHES`` chosen so that each worker gets about ``UNITS_PER_WORKER`` ranges or more;
    ranges start on batch boundaries, so an actor's batches are the local engine's batches.
    """
    batches = math.ceil(total / batch_size)
    per_unit = max(1, min(UNIT_BATCHES, math.ceil(batches / (workers * UNITS_PER_WORKER))))
    size = per_unit * batch_size
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def run_job(models: Sequence[onnx.ModelProto], data: Path | str, job: Job[T], *,
            options: RayOptions, batch_size: int, prep: inspection.PrepOptions | None,
            progress: ProgressFn | None) -> RayRun[T]:
    """Run ``job`` over DATA on Ray Data actors and fold the partials in DATA order.

    Args:
        models: the models every actor loads (model A first); sent once through Ray.
        data: DATA as for ``io.data.open_data``, or a URI (``file:///val``,
            ``s3://bucket/val``), or a path on ``options.filesystem``.
        job: per-batch step, providers, and the driver's fold.
        options: cluster address, workers, GPUs per worker, retries, filesystem.
        batch_size: inputs per batch (the local engine's batches).
        prep: preprocessing overrides, as locally.
        progress: called as ranges finish (unit ``image``: inputs read or skipped).

    Returns:
        ``RayRun`` with the folded value, inputs, skipped inputs and providers.

    Raises:
        InputError: Ray missing, DATA missing or with no readable input; ProviderError: GPUs
            asked for and the cluster has none (or too few for one worker); an error of the
            package raised in an actor (ModelError, ProviderError...), unwrapped from Ray's;
            KeyboardInterrupt: Ctrl-C before any unit finished.
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address, logging_level=logging.WARNING,
                 log_to_driver=False)
    actors: _Actors | None = None
    blobs = tuple(m.SerializeToString() for m in models)
    try:
        _check_gpus(ray, options)
        files = filesystems.list_image_files(data, options.filesystem)
        if files is None:  # ranges of rows: actors start (import, sessions) while we plan
            actors = _start_actors(ray, blobs, job, options, batch_size, prep)
        source = _plan_data(models[0], data, files, prep, batch_size, options.filesystem)
        units = work_units(source.total, batch_size, options.workers)
        results = (_range_results(ray, actors, source, units) if actors else
                   _file_results(ray, blobs, source, units, job, options, batch_size, prep))
        run = _collect(results, units, job, source.total, progress)
    except Exception as err:
        cause = _package_error(err)
        if cause is None:
            raise
        raise cause from err
    finally:
        for actor in actors.handles if actors else ():  # nothing outlives the run
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
    if run.images == 0 and not run.partial:
        first = f"; first: {run.skipped[0][0]}: {run.skipped[0][1]}" if run.skipped else ""
        raise InputError(f"no input in {data} could be read ({len(run.skipped)} skipped{first});"
                         f" give {api_data.DATA_KINDS}")
    return run


@dataclass(frozen=True, slots=True)
class _Source:
    """DATA as the driver planned it: ``files`` (read by Ray's file reader) or, when None, an
    array or IDX file at ``path`` (on ``filesystem``, or local when None) streamed by ranges of
    rows; ``total`` inputs."""

    total: int
    path: str
    files: filesystems.ImageFiles | None
    filesystem: Any = None

    def opener(self) -> api_data.Opener | None:
        """Open ``path`` on ``filesystem`` (None: a local path, opened by ``open_data``)."""
        if self.filesystem is None:
            return None
        return functools.partial(self.filesystem.open_input_file, self.path)


def _plan_data(model: onnx.ModelProto, data: Path | str, files: filesystems.ImageFiles | None,
               prep: inspection.PrepOptions | None, batch_size: int, filesystem: Any
               ) -> _Source:
    """Count DATA's inputs (its listed image ``files``, or its rows: headers only)."""
    if files is not None and files.filesystem is not None:
        return _Source(len(files.paths), str(data), files)
    source = _Source(0, str(data), files)
    if files is None and (filesystem is not None or filesystems.is_uri(data)):
        path, on = filesystems.resolve_file(data, filesystem)
        source = _Source(0, path, None, on)
    with inspection.Inspector(model, "cpu", prep=prep, max_batch=batch_size) as driver:
        # checks that the model takes DATA, as locally; headers only
        total = api_data.data_size(driver, source.path, opener=source.opener())
    # a local path absolute, so that workers (in other folders) find it; links kept
    path = source.path if source.filesystem is not None else os.path.abspath(source.path)
    return _Source(total, path, files, source.filesystem)


def _check_gpus(ray: Any, options: RayOptions) -> None:
    """Refuse GPU workers on a cluster without enough GPUs (Ray would wait for them forever)."""
    if options.gpus_per_worker <= 0:
        return
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus < options.gpus_per_worker:
        raise ProviderError(f"each ray worker asks for {options.gpus_per_worker:g} GPU(s) but the "
                            f"Ray cluster has {gpus:g}; start the nodes with GPUs (ray start "
                            "--num-gpus N) or use gpus_per_worker=0 for CPU workers")


def _package_error(err: BaseException) -> FeatvizError | None:
    """The package's own error behind Ray's wrappers (RayTaskError, UserCodeException), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, FeatvizError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _worker_kwargs(models: tuple[bytes, ...] | None, job: Job[Any], options: RayOptions,
                   batch_size: int, prep: inspection.PrepOptions | None) -> dict[str, Any]:
    """The workers' constructor arguments (``models``: serialized protos, or None)."""
    return {"models": models, "provider": "cuda" if options.gpus_per_worker > 0 else "cpu",
            "prep": prep, "batch_size": batch_size, "step": job.step,
            "sessions": job.sessions}


@dataclass(frozen=True, slots=True)
class _Stored:
    """Serialized models in Ray's object store (``ref`` to a ``tuple[bytes, ...]``); held in a
    field so that Ray passes the reference itself, not the bytes, to the actors."""

    ref: Any


@dataclass(frozen=True, slots=True)
class _Actors:
    """The run's Ray actors: ``handles``, the ``models`` they open, and the reference of each
    one's ``ready`` call (to the actor), submitted as it was started."""

    handles: tuple[Any, ...]
    models: _Stored
    starting: dict[Any, Any]


def _start_actors(ray: Any, models: tuple[bytes, ...], job: Job[Any], options: RayOptions,
                  batch_size: int, prep: inspection.PrepOptions | None) -> _Actors:
    """Start ``options.workers`` Ray actors, each importing the package and opening its
    sessions (``ready``) while the driver goes on planning.

    Ray Core actors rather than Ray Data's actor pool: Ray starts each at once (on an idle
    pooled worker where it has one, else in a new worker process), where a Dataset first
    starts its executor and then a new pool for every run (3-4.5 s on a 2-core host, longer
    than the local engine's whole run over 10 000 MNIST images).
    """
    remote = ray.remote(_Worker).options(
        num_cpus=1.0, num_gpus=options.gpus_per_worker, max_restarts=options.retries,
        max_task_retries=options.retries)
    handles = tuple(remote.remote(**_worker_kwargs(None, job, options, batch_size, prep))
                    for _ in range(options.workers))
    stored = _Stored(ray.put(models))  # once for all actors; alive as long as the run
    return _Actors(handles, stored, {actor.ready.remote(stored): actor for actor in handles})


def _range_results(ray: Any, actors: _Actors, source: _Source,
                   units: Sequence[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    """Stream ``units`` through ``actors``; yield ``(start, result)`` as units finish.

    Each actor gets units once it is ready (its sessions open), then two in flight (one queued
    behind the one running, so it never waits for the driver).
    A killed actor is restarted by Ray and its unfinished calls are retried there
    (``max_restarts``, ``max_task_retries``): each call still has one result.
    """
    todo = collections.deque(units)
    starting = dict(actors.starting)
    running: dict[Any, tuple[Any, int]] = {}

    def submit(actor: Any) -> None:
        if todo:
            start, stop = todo.popleft()
            running[actor.unit.remote(source.path, source.filesystem, start, stop,
                                      actors.models)] = (actor, start)

    while running or todo:
        ready, _ = ray.wait([*running, *starting], num_returns=1)
        if ready[0] in starting:
            ray.get(ready[0])  # a package error in the actor's constructor is raised here
            actor = starting.pop(ready[0])
            submit(actor)
            submit(actor)
        else:
            actor, start = running.pop(ready[0])
            submit(actor)
            yield start, ray.get(ready[0])


def _file_results(ray: Any, models: tuple[bytes, ...], source: _Source,
                  units: Sequence[tuple[int, int]], job: Job[Any], options: RayOptions,
                  batch_size: int, prep: inspection.PrepOptions | None
                  ) -> Iterator[tuple[int, bytes]]:
    """Read the image files with Ray Data, mapped by its actor pool; yield each unit's
    ``(start, result)`` as it finishes."""
    assert source.files is not None
    ray = import_ray(data=True)
    context = ray.data.DataContext.get_current()  # the caller's progress bar counts inputs
    context.enable_progress_bars = context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    kwargs = _worker_kwargs(models, job, options, batch_size, prep)
    preserve = context.execution_options.preserve_order
    try:  # a Dataset copies the context it is made in: restored once it is made
        context.execution_options.preserve_order = True
        dataset, kwargs["file_units"] = _file_rows(ray, source.files, units)
        with warnings.catch_warnings():  # passing max_restarts as a remote arg is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            mapped = dataset.map_batches(
                _Worker, batch_size=units[0][1] - units[0][0], batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=options.workers),
                num_cpus=_actor_cpus(ray, options.workers), num_gpus=options.gpus_per_worker,
                fn_constructor_kwargs=kwargs,
                max_restarts=options.retries, max_task_retries=options.retries)
    finally:
        context.execution_options.preserve_order = preserve
    for row in mapped.iter_rows():
        yield int(row["start"]), bytes(row["result"])


@dataclass(frozen=True, slots=True)
class _FileUnits:
    """How an actor numbers file rows: each unit by its first file's path, and the name the
    local engine gives a file where it differs from the path read (a relative DATA)."""

    units: Mapping[str, tuple[int, int]]
    shown: Mapping[str, str]


def _file_rows(ray: Any, files: filesystems.ImageFiles, units: Sequence[tuple[int, int]]
               ) -> tuple[Any, _FileUnits]:
    """Image files through Ray's file reader, in blocks of exactly one work unit each.

    Returns the Dataset (columns ``bytes``, ``path``) and each unit by its first file's path.
    Decoding happens in the actors (``filesystems.image_stream``) rather than with
    ``ray.data.read_images``, so that an unreadable file is skipped and counted as locally
    (Ray's reader fails the whole run) and pixels come from the same decoder (EXIF
    orientation, modes, bomb checks) as the local engine's.
    """
    paths = list(files.paths)
    if files.filesystem is None:  # absolute, so that every worker finds them (links kept)
        paths = [os.path.abspath(p) for p in files.paths]
    shown = {a: p for a, p in zip(paths, files.paths, strict=True) if a != p}
    dataset = ray.data.read_binary_files(paths, include_paths=True, filesystem=files.filesystem,
                                         override_num_blocks=len(units))
    # in order (preserve_order), cut into blocks of one unit each: each actor call then
    # gets the inputs [start, stop) of one unit, whole batches as in the local stream
    size = units[0][1] - units[0][0]
    dataset = dataset.repartition(target_num_rows_per_block=size, strict=True)
    return dataset, _FileUnits({paths[a]: (a, b) for a, b in units}, shown)


def _actor_cpus(ray: Any, workers: int) -> float:
    """CPUs per actor that leave one CPU of the cluster to Ray's read tasks (at most 1)."""
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(0.25, min(1.0, (cpus - 1.0) / workers))


def _collect(results: Iterable[tuple[int, bytes]], units: Sequence[tuple[int, int]], job: Job[T],
             total: int, progress: ProgressFn | None) -> RayRun[T]:
    """Fold finished ranges in DATA order; a range seen twice (a retried task) counts once."""
    order = [start for start, _ in units]
    # (value, images, skipped, next range, providers) replaced in one store per range: a
    # Ctrl-C never leaves a range half folded
    state: tuple[T, int, tuple[tuple[str, str], ...], int, tuple[tuple[str, ...], ...]] = (
        job.initial, 0, (), 0, ())
    pending: dict[int, _UnitResult] = {}
    seen: set[int] = set()
    done, partial = 0, False
    try:
        for start, result in results:
            if start in seen:
                log.info("range starting at input %d arrived twice (retried); kept once", start)
                continue
            seen.add(start)
            pending[start] = pickle.loads(result)
            done += pending[start].done
            while state[3] < len(order) and order[state[3]] in pending:
                state = _fold_unit(state, pending.pop(order[state[3]]), job)
            if progress is not None:
                progress(Progress(done, total, "image"))
    except KeyboardInterrupt:
        if state[1] == 0:
            raise
        partial = True
        log.warning("interrupted: the result covers the first %d inputs only", state[1])
    value, images, skipped, _, providers = state
    return RayRun(value, images, skipped, partial, providers)


def _fold_unit(state: tuple[T, int, tuple[tuple[str, str], ...], int,
                            tuple[tuple[str, ...], ...]],
               unit: _UnitResult, job: Job[T]
               ) -> tuple[T, int, tuple[tuple[str, str], ...], int, tuple[tuple[str, ...], ...]]:
    value, images, skipped, index, providers = state
    for rows, part in unit.parts:
        value = job.fold(value, part)
        images += rows
    return (value, images, skipped + unit.skipped, index + 1,
            providers or (unit.providers if unit.parts else ()))


class _ActorInspector(inspection.Inspector):
    """An inspector whose sessions run on ``threads`` threads (None: onnxruntime's default, a
    thread per core). An actor's run on one: it holds one CPU of the cluster, and with a
    thread per core of the host the actors on one host would share its cores between more
    spinning threads than cores."""

    threads: int | None = 1

    def open_session(self, model: onnx.ModelProto, *, spinning: bool = True
                     ) -> runtime.Session:
        return runtime.Session(model, self.provider, threads=self.threads,
                               spinning=spinning and self.threads is not None,
                               name=self.name, external_folder=self.external_folder)


class _Worker:
    """A worker: the models' inspectors, kept for its life; work units in (a range of rows, or
    the files of one unit from Ray Data), partials out (one result per unit).

    Given the serialized ``models``, the constructor opens the step's sessions at once; given
    None (a Ray actor), ``ready`` or the first ``unit`` opens them from the models ``_Stored``
    in Ray's object store (Ray keeps an actor's constructor arguments for its restarts, and
    warns on each run when they are large). A package error there is raised by every call,
    as Ray's task error around it.
    """

    def __init__(self, *, models: tuple[bytes, ...] | None, provider: str,
                 prep: inspection.PrepOptions | None, batch_size: int, step: Step,
                 sessions: Sessions, file_units: _FileUnits | None = None,
                 threads: int | None = 1) -> None:
        self._batch_size, self._step, self._sessions = batch_size, step, sessions
        self._provider, self._prep, self._threads = provider, prep, threads
        self._files = file_units
        self._error: FeatvizError | None = None
        self._inspectors: list[inspection.Inspector] = []
        self._providers: tuple[tuple[str, ...], ...] = ()
        if models is not None:
            self._open(models)

    def _open(self, models: tuple[bytes, ...] | _Stored) -> None:
        """Open one inspector per model and the step's sessions (once)."""
        if self._inspectors or self._error is not None:
            return
        blobs = models
        if isinstance(models, _Stored):  # in an actor, where Ray runs
            import ray

            blobs = ray.get(models.ref)
        assert isinstance(blobs, tuple)
        try:
            for model in blobs:
                inspector = _ActorInspector(model, self._provider, prep=self._prep,
                                            max_batch=self._batch_size)
                inspector.threads = self._threads
                self._inspectors.append(inspector)
            self._providers = self._sessions(self._inspectors)
        except FeatvizError as err:
            self._error = err

    def ready(self, models: _Stored) -> None:
        """Open the sessions; raise the package error that stopped them."""
        self._open(models)
        if self._error is not None:
            raise self._error

    def unit(self, data: str, filesystem: Any, start: int, stop: int,
             models: _Stored | None = None) -> bytes:
        """Stream inputs ``[start, stop)`` of DATA (``data`` on ``filesystem``, or local when
        None) through the step; return the pickled ``_UnitResult``."""
        if models is not None:  # a restarted actor, its sessions not yet open
            self._open(models)
        opener = _Source(0, data, None, filesystem).opener()
        return self._unit(lambda: api_data.open_data(
            self._inspectors[0], data, batch_size=self._batch_size, rows=(start, stop),
            opener=opener))

    def __call__(self, files: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Stream one unit's files (Ray Data's columns ``path``, ``bytes``) through the step."""
        if self._error is not None:
            raise self._error
        start, stream = self._file_stream(files)
        return {"start": np.asarray([start], np.int64),
                "result": np.array([self._unit(lambda: stream)], dtype=object)}

    def _file_stream(self, files: Mapping[str, NDArray[Any]]
                     ) -> tuple[int, api_data.DataStream]:
        """The stream of one unit's files, numbered from the unit's start."""
        assert self._files is not None
        paths = [str(p) for p in files["path"]]
        start, stop = self._files.units.get(paths[0], (-1, -1))
        if stop - start != len(paths):  # Ray Data broke the order or the unit blocks
            raise RuntimeError(f"ray worker got {len(paths)} files from {paths[0]}, not one "
                               f"work unit (inputs [{start}, {stop}))")
        named = [(self._files.shown.get(p, p), bytes(b))
                 for p, b in zip(paths, files["bytes"], strict=True)]
        return start, filesystems.image_stream(self._inspectors[0], named,
                                               batch_size=self._batch_size, first=start)

    def _unit(self, open_stream: Callable[[], api_data.DataStream]) -> bytes:
        """Run the step on each batch of the stream; return the pickled ``_UnitResult``."""
        if self._error is not None:
            raise self._error
        stream = open_stream()
        parts = tuple((len(part.batch), self._step(self._inspectors, part.batch))
                      for part in stream)
        providers = self._providers if parts else ()
        return pickle.dumps(_UnitResult(parts, tuple(stream.skipped), stream.done, providers))
