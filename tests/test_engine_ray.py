"""Tests for the ``ray`` engine of ``stats`` and ``compare`` (``audit.engine_ray``), in Ray's local
mode (``ray.init(num_cpus=2)``, once per session). The reference is the local engine on the same
data: the same JSON, with sums within 1e-9 relative and the same dead / saturated /
first_divergent / skipped counts; the inputs measured are also checked against the data as
written (IDX header, files made)."""

from __future__ import annotations

import builtins
import json
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from onnx_featviz.audit import compare as audit_compare
from onnx_featviz.audit import output as audit_output
from onnx_featviz.audit import stats as audit_stats
from onnx_featviz.cli import audit as cli_audit
from onnx_featviz.errors import InputError, ModelError, ProviderError
from onnx_featviz.structs import Progress
from tests import graphs
from tests.conftest import MODELS, REPO, interrupting_bar, run, shared_path, strict_json
from tests.test_compare import read_idx, write_idx

pytestmark = pytest.mark.slow

MNIST_MODEL = MODELS / "mnist_cnn.onnx"
MNIST_IMAGES = 2000
PHOTOS = 64
RAY = audit_compare.RayOptions(workers=2)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """Ray in local mode with 2 CPUs, started once; workers import this checkout."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine_ray")


@pytest.fixture(scope="module")
def mnist(work: Path) -> Path:
    """The first 2,000 MNIST test images as a gzip IDX file."""
    pixels = read_idx(shared_path("mnist", "t10k-images-idx3-ubyte.gz"), MNIST_IMAGES)
    return write_idx(work / "t2000-images-idx3-ubyte.gz", pixels)


@pytest.fixture(scope="module")
def photos(work: Path) -> Path:
    """64 photos of mixed sizes (resizes and crops of the shared images) and one broken file."""
    sources = sorted(shared_path("images").glob("*.*"))
    rng = np.random.default_rng(0)
    folder = work / "photos"
    folder.mkdir()
    for index in range(PHOTOS):
        image = Image.open(sources[index % len(sources)]).convert("RGB")
        w, h = image.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = image.crop((left, top, left + w // 2 + int(rng.integers(0, w // 4)),
                           top + h // 2 + int(rng.integers(0, h // 4))))
        side = int(rng.integers(40, 160))
        crop.resize((side, side * 3 // 4)).save(folder / f"photo_{index:03d}.png")
    (folder / "photo_032_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return folder


def assert_same_json(local: Any, ray: Any, where: str = "$") -> None:
    """Equal structure, strings and integers; floats within 1e-9 relative (NaN equals NaN)."""
    assert type(local) is type(ray) or {type(local), type(ray)} <= {int, float}, where
    if isinstance(local, dict):
        assert list(local) == list(ray), where
        for key in local:
            assert_same_json(local[key], ray[key], f"{where}.{key}")
    elif isinstance(local, list):
        assert len(local) == len(ray), where
        for index, (a, b) in enumerate(zip(local, ray, strict=True)):
            assert_same_json(a, b, f"{where}[{index}]")
    elif isinstance(local, float):
        assert (math.isnan(local) and math.isnan(ray)) or math.isclose(
            local, ray, rel_tol=1e-9, abs_tol=1e-300), (where, local, ray)
    else:
        assert local == ray, (where, local, ray)


def stats_json(result: audit_stats.StatsResult) -> Any:
    return json.loads(json.dumps(audit_output.stats_to_json(result)))


def test_stats_mnist_idx_equals_local(ray_session: Any, mnist: Path) -> None:
    local = audit_stats.dataset_stats(MNIST_MODEL, mnist, audit_stats.StatsOptions(provider="cpu"))
    seen: list[Progress] = []
    ray = audit_stats.dataset_stats(MNIST_MODEL, mnist,
                                    audit_stats.StatsOptions(engine="ray", ray=RAY),
                                    progress=seen.append)
    assert ray.images == local.images == MNIST_IMAGES and not ray.partial
    assert ray.providers == ("CPUExecutionProvider",)
    assert seen[-1] == Progress(MNIST_IMAGES, MNIST_IMAGES, "image")
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert ray.findings() == local.findings()
    assert_same_json(stats_json(local), stats_json(ray))


def test_stats_photo_folder_equals_local(ray_session: Any, photos: Path) -> None:
    model = shared_path("models", "cifar10_cnn_pytorch.onnx")
    options = audit_stats.StatsOptions(provider="cpu", batch_size=8)
    local = audit_stats.dataset_stats(model, photos, options)
    ray = audit_stats.dataset_stats(model, photos, audit_stats.StatsOptions(
        batch_size=8, engine="ray", ray=RAY))
    assert ray.images == local.images == PHOTOS
    assert len(ray.skipped) == len(local.skipped) == 1
    assert ray.skipped[0][0] == str(photos / "photo_032_broken.png")
    assert_same_json(stats_json(local), stats_json(ray))


def test_stats_photo_folder_by_uri_and_pyarrow_filesystem(ray_session: Any, photos: Path
                                                          ) -> None:
    """A ``file://`` URI and a path on a pyarrow ``SubTreeFileSystem`` go through Ray's file
    reader and give the local result; sources are named as the filesystem names them."""
    pafs = pytest.importorskip("pyarrow.fs")
    model = shared_path("models", "cifar10_cnn_pytorch.onnx")
    local = stats_json(audit_stats.dataset_stats(
        model, photos, audit_stats.StatsOptions(provider="cpu", batch_size=8)))
    by_uri = audit_stats.dataset_stats(model, photos.as_uri(), audit_stats.StatsOptions(
        batch_size=8, engine="ray", ray=RAY))
    assert by_uri.images == PHOTOS and by_uri.skipped[0][0] == str(photos / "photo_032_broken.png")
    assert_same_json(local, stats_json(by_uri))
    subtree = pafs.SubTreeFileSystem(str(photos.parent), pafs.LocalFileSystem())
    on_fs = audit_stats.dataset_stats(model, photos.name, audit_stats.StatsOptions(
        batch_size=8, engine="ray", ray=audit_compare.RayOptions(workers=2,
                                                                 filesystem=subtree)))
    found = stats_json(on_fs)
    assert [s["source"] for s in found["skipped"]] == ["photos/photo_032_broken.png"]
    assert str(photos) not in found["skipped"][0]["reason"]
    found["skipped"] = local["skipped"]  # the same file, named on the sub-tree filesystem
    assert_same_json(local, found)


def test_cli_takes_a_file_uri(ray_session: Any, photos: Path, tmp_path: Path) -> None:
    model = shared_path("models", "cifar10_cnn_pytorch.onnx")
    out = tmp_path / "stats.json"
    result = run("stats", model, photos.as_uri(), "--engine", "ray", "--batch", "8",
                 "--json-file", out)
    assert result.exit_code == 0, result.output
    written = strict_json(out.read_text())
    assert written["images"] == PHOTOS
    assert written["skipped"][0]["source"] == str(photos / "photo_032_broken.png")


def test_idx_on_a_pyarrow_filesystem_equals_local(ray_session: Any, mnist: Path) -> None:
    """An IDX file on a pyarrow filesystem is read in ranges of rows by the actors."""
    pafs = pytest.importorskip("pyarrow.fs")
    subtree = pafs.SubTreeFileSystem(str(mnist.parent), pafs.LocalFileSystem())
    options = audit_stats.StatsOptions(engine="ray", ray=audit_compare.RayOptions(
        filesystem=subtree))
    local = audit_stats.dataset_stats(MNIST_MODEL, mnist, audit_stats.StatsOptions(provider="cpu"))
    ray = audit_stats.dataset_stats(MNIST_MODEL, mnist.name, options)
    assert ray.images == MNIST_IMAGES
    assert_same_json(stats_json(local), stats_json(ray))
    with pytest.raises(InputError, match="missing.npz does not exist"):
        audit_stats.dataset_stats(MNIST_MODEL, "missing.npz", options)


@pytest.fixture(scope="module")
def int8_model(work: Path) -> Path:
    model = onnx.load(MNIST_MODEL)
    train = read_idx(shared_path("mnist", "train-images-idx3-ubyte.gz"), 200)
    path = work / "mnist_qdq.onnx"
    onnx.save_model(graphs.qdq_model(model, (train.astype(np.float32) / 255.0)[:, None]), path)
    return path


def test_compare_float_int8_equals_local(ray_session: Any, mnist: Path, int8_model: Path
                                         ) -> None:
    local = audit_compare.compare_models(MNIST_MODEL, int8_model, mnist,
                                         audit_compare.CompareOptions(provider_a="cpu",
                                                                      provider_b="cpu"))
    ray = audit_compare.compare_models(MNIST_MODEL, int8_model, mnist,
                                       audit_compare.CompareOptions(engine="ray", ray=RAY))
    assert ray.images == local.images == MNIST_IMAGES
    assert ray.first_divergent == local.first_divergent
    assert ray.model_b.providers == ("CPUExecutionProvider",)
    assert ray.outputs and ray.outputs[0].agreement.count == MNIST_IMAGES
    assert_same_json(audit_output.compare_to_json(local), audit_output.compare_to_json(ray))


def actor_pids() -> list[int]:
    """Processes of the engine's actors (their title names the worker class: ``ray::_Worker``
    for the Ray actors that stream ranges of rows, ``MapBatches(_Worker)`` under Ray Data)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and (title.startswith(b"ray::_Worker")
                                     or b"MapBatches(_Worker)" in title):
            pids.append(int(entry.name))
    return pids


def test_killed_actor_is_retried_without_double_counting(ray_session: Any, mnist: Path
                                                         ) -> None:
    options = audit_stats.StatsOptions(batch_size=16, engine="ray", ray=RAY)
    killed: list[int] = []

    def kill_once(progress: Progress) -> None:
        if not killed and (pids := actor_pids()):
            os.kill(pids[0], signal.SIGKILL)  # the actor dies mid-run, as on a lost node
            killed.append(pids[0])

    ray = audit_stats.dataset_stats(MNIST_MODEL, mnist, options, progress=kill_once)
    local = audit_stats.dataset_stats(MNIST_MODEL, mnist,
                                      audit_stats.StatsOptions(provider="cpu", batch_size=16))
    assert killed, "no actor process was found to kill"
    assert ray.images == MNIST_IMAGES and not ray.partial
    assert_same_json(stats_json(local), stats_json(ray))


def test_ctrl_c_writes_partial_json(ray_session: Any, mnist: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_audit, "progress_bar", interrupting_bar(after=MNIST_IMAGES // 2))
    out = tmp_path / "stats.json"
    result = run("stats", MNIST_MODEL, mnist, "--engine", "ray", "--json", out)
    assert result.exit_code == cli_audit.EXIT_INTERRUPTED, result.output
    written = strict_json(out.read_text())
    assert written["partial"] is True and 0 < written["images"] < MNIST_IMAGES
    # the partial result is the local result over the first ``images`` inputs
    first = write_idx(tmp_path / "first.gz", read_idx(mnist, written["images"]))
    local = audit_stats.dataset_stats(MNIST_MODEL, first, audit_stats.StatsOptions(provider="cpu"))
    expected = stats_json(local)
    expected["partial"], expected["images"] = True, written["images"]
    assert_same_json(expected, written)


def test_missing_ray_is_one_line_error(mnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(InputError, match=r'pip install "onnx-featviz\[ray\]"'):
        audit_stats.dataset_stats(MNIST_MODEL, mnist, audit_stats.StatsOptions(engine="ray"))
    result = run("stats", MNIST_MODEL, mnist, "--engine", "ray")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and 'pip install "onnx-featviz[ray]"' in lines[0]


@pytest.mark.parametrize("args", [("stats", MNIST_MODEL, "--provider", "cuda"),
                                  ("compare", MNIST_MODEL, MNIST_MODEL, "--provider-b", "cpu")])
def test_provider_options_are_refused_with_ray(mnist: Path, args: tuple[Any, ...]) -> None:
    result = run(*args[:-2], mnist, *args[-2:], "--engine", "ray")
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert f"{args[-2]} is not used with --engine ray" in last and "--gpus-per-worker" in last


def test_gpu_workers_without_gpus_are_refused(ray_session: Any, mnist: Path) -> None:
    options = audit_stats.StatsOptions(
        engine="ray", ray=audit_compare.RayOptions(gpus_per_worker=1000.0))
    with pytest.raises(ProviderError, match="asks for 1000 GPU"):
        audit_stats.dataset_stats(MNIST_MODEL, mnist, options)


def test_package_errors_are_unwrapped_from_ray_errors() -> None:
    from onnx_featviz.audit import engine_ray

    inner = ModelError("model A is broken")

    class Wrapper(Exception):  # like RayTaskError: the worker's error in ``cause``
        cause = inner

    try:
        try:
            raise Wrapper("task failed")
        except Wrapper as wrapped:
            raise RuntimeError("UserCodeException") from wrapped
    except RuntimeError as err:
        assert engine_ray._package_error(err) is inner
    assert engine_ray._package_error(RuntimeError("plain")) is None


def test_bad_engine_options_are_refused(mnist: Path) -> None:
    with pytest.raises(InputError, match="unknown engine 'spark'; choose one of local, ray"):
        audit_stats.dataset_stats(MNIST_MODEL, mnist, audit_stats.StatsOptions(engine="spark"))
    with pytest.raises(InputError, match="workers must be at least 1, got 0"):
        audit_compare.compare_models(MNIST_MODEL, MNIST_MODEL, mnist, audit_compare.CompareOptions(
            engine="ray", ray=audit_compare.RayOptions(workers=0)))


def test_work_units_are_whole_batches_in_order() -> None:
    from onnx_featviz.audit import engine_ray

    units = engine_ray.work_units(1000, 32, 2)  # 32 batches, 8 ranges of 4 batches
    assert units[0] == (0, 128) and units[-1] == (896, 1000) and len(units) == 8
    assert all(a % 32 == 0 and a < b for a, b in units)
    assert [b for _, b in units[:-1]] == [a for a, _ in units[1:]]
    big = engine_ray.work_units(10**6, 32, 2)
    assert big[0] == (0, 32 * engine_ray.UNIT_BATCHES)


# -- row ranges of DATA (what each actor streams), no Ray needed ---------------------------------
def mnist_rows(pixels: np.ndarray) -> np.ndarray:
    """The MNIST CNN's preprocessing by hand: pixels / 255, (N, 1, 28, 28) float32."""
    return (pixels.astype(np.float32) / np.float32(255.0))[:, None]


def test_idx_row_ranges_read_their_rows_on_batch_boundaries(work: Path) -> None:
    from onnx_featviz import api
    from onnx_featviz.io import data as api_data

    pixels = np.random.default_rng(0).integers(0, 256, (50, 28, 28), np.uint8)
    path = write_idx(work / "fifty.gz", pixels)
    with api.Inspector(MNIST_MODEL, "cpu") as inspector:
        assert api_data.data_size(inspector, path) == 50
        for low, high in ((0, 16), (16, 48), (48, 50), (40, 99), (60, 70)):
            stream = api_data.open_data(inspector, path, batch_size=8, rows=(low, high))
            batches = list(stream)
            stop = min(high, 50)
            assert [len(b.batch) for b in batches] == [
                min(stop, s + 8) - s for s in range(low, stop, 8)]
            if stop <= low:
                assert batches == [] and stream.done == 0
                continue
            got = np.concatenate([b.batch for b in batches])
            np.testing.assert_allclose(got, mnist_rows(pixels[low:stop]), rtol=0, atol=1e-6)
            assert [s for b in batches for s in b.sources] == [
                f"{path}[{i}]" for i in range(low, stop)]
            assert stream.done == stop - low


def test_npz_row_ranges_cross_arrays_in_file_order(work: Path) -> None:
    from onnx_featviz import api
    from onnx_featviz.io import data as api_data

    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 256, (n, 28, 28), np.uint8) for n in (10, 7))
    path = work / "two.npz"
    np.savez(path, first=first, second=second)
    both = np.concatenate([first, second])
    with api.Inspector(MNIST_MODEL, "cpu") as inspector:
        assert api_data.data_size(inspector, path) == 17
        parts = [list(api_data.open_data(inspector, path, batch_size=4, rows=r))
                 for r in ((0, 8), (8, 12), (12, 17))]
    rows = np.concatenate([b.batch for part in parts for b in part])
    np.testing.assert_allclose(rows, mnist_rows(both), rtol=0, atol=1e-6)
    sources = [s for part in parts for b in part for s in b.sources]
    assert sources[8:12] == [f"{path}:first[8]", f"{path}:first[9]", f"{path}:second[0]",
                             f"{path}:second[1]"]
    # batch 2 is inputs [8, 12): it spans the two arrays, as in the whole stream
    assert [len(b.batch) for b in parts[1]] == [4]
