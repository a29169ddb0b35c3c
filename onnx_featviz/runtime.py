"""onnxruntime sessions: provider resolution, batching, IO binding (the only onnxruntime user)."""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import EncodeError
from numpy.typing import NDArray

from onnx_featviz.errors import InputError, ModelError, ProviderError

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cuda", "cpu")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
# protobuf cannot serialize a message over 2 GiB; such models go through a temporary folder.
_PROTO_LIMIT = 2**31 - 2**20
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool", "tensor(uint16)": "uint16",
    "tensor(int16)": "int16", "tensor(bfloat16)": "float32",
}


def _quiet_session(
    source: bytes | str, providers: list[str], options: ort.SessionOptions
) -> ort.InferenceSession:
    """Create a session with onnxruntime's default logger silenced for the attempt.

    A failed CUDA provider load prints a long red log; ``auto`` must show one short notice instead.
    """
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    finally:
        ort.set_default_logger_severity(4)  # errors reach the user as exceptions, one line


_CXX_NOISE = re.compile(
    r"(\[ONNXRuntimeError\] : \d+ : \w+ : )"  # the status prefix
    r"|(\s*\S+\.(cc|cpp|h|hpp|cu):\d+\S*)"  # a source location
    r"|(\s*(\w+::)+~?\w+(<[^>]*>)?(::~?\w+)*(\([^)]*\))?( const)?)"  # a C++ signature
    r"|(\s*\[?\S+\.so(\.\d+)*\]?)")  # a shared library


def ort_message(err: BaseException) -> str:
    """Return onnxruntime's error as one short line: no status prefix, C++ signatures,
    source locations or library paths."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = _CXX_NOISE.sub(" ", text)
    text = " ".join(text.split()).strip(" :;,")
    return (text[:297] + "...") if len(text) > 300 else text or type(err).__name__


def _is_ort_error(err: BaseException) -> bool:
    return type(err).__module__.startswith("onnxruntime")


def cpu_has_vnni() -> bool | None:
    """Return whether this x86 CPU has VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8); None elsewhere.

    onnxruntime's CPU int8 GEMMs use VNNI's exact int32 dot products when it is there, and
    saturating int16 pair sums (``vpmaddubsw``) on older AVX2/AVX-512 CPUs. numpy's CPUID probe
    answers for AVX512-VNNI; /proc/cpuinfo (Linux) for AVX-VNNI and AMX, which numpy omits.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return None
    import importlib

    features: dict[str, bool] = {}
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # 2.x, 1.x
        try:
            features = dict(importlib.import_module(module).__cpu_features__)
            break
        except (ImportError, AttributeError):
            continue
    if features.get("AVX512VNNI"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx_vnni" in flags or "amx_int8" in flags


def cuda_runs() -> bool:
    """Return True when onnxruntime really runs a session on CUDA here (not only lists it)."""
    if _CUDA not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    try:
        session = _quiet_session(probe.SerializeToString(), [_CUDA, _CPU], ort.SessionOptions())
    except Exception:  # noqa: BLE001 - any failure to start CUDA means "no"
        return False
    return _CUDA in session.get_providers()


def resolve_providers(provider: str) -> list[str]:
    """Return the onnxruntime provider list to request for ``auto``, ``cuda`` or ``cpu``.

    Raises:
        ProviderError: ``provider`` is not one of ``PROVIDERS``.
    """
    if provider not in PROVIDERS:
        raise ProviderError(
            f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}"
        )
    if provider == "cpu" or (provider == "auto" and _CUDA not in ort.get_available_providers()):
        return [_CPU]
    return [_CUDA, _CPU]


class Session:
    """An onnxruntime session the caller owns (use as a context manager).

    Args:
        model: the model to run (not modified).
        provider: ``"auto"`` (CUDA when it really runs, else CPU with one warning), ``"cuda"``
            (error when CUDA does not run) or ``"cpu"``.
        threads: intra-op threads (None: onnxruntime's default, all cores).
        spinning: False stops idle intra-op threads from busy-waiting for the next call;
            cheaper when the host computes between session calls (True: onnxruntime's
            default).

    Raises:
        ProviderError: ``provider="cuda"`` but CUDA does not run, or an unknown provider.
        ModelError: onnxruntime rejects the model.
    """

    def __init__(self, model: onnx.ModelProto, provider: str = "auto", *,
                 threads: int | None = None, spinning: bool = True,
                 name: str = "the model") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.name = name
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the user as exceptions, one line each
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        requested = resolve_providers(provider)
        source = self._source(model)
        try:
            self._session = _quiet_session(source, requested, options)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises several unrelated types
            self.close()
            raise ModelError(
                f"onnxruntime cannot load {name}: {ort_message(err)}; check the model with "
                "onnx.checker.check_model or re-export it with a supported opset"
            ) from err
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        self._check_provider(provider, requested)
        self.on_cuda = _CUDA in self.providers
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.input_types = {i.name: _ORT_TYPES.get(i.type, "float32")
                            for i in self._session.get_inputs()}

    def _source(self, model: onnx.ModelProto) -> bytes | str:
        try:  # ByteSize() itself raises EncodeError past protobuf's 2 GiB limit
            small = model.ByteSize() < _PROTO_LIMIT
        except EncodeError:
            small = False
        if small:
            data: bytes = model.SerializeToString()
            return data
        self._tmp = tempfile.TemporaryDirectory(prefix="featviz-")
        path = Path(self._tmp.name) / "model.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # saving with external data strips the tensors it writes out
        onnx.save_model(copy, str(path), save_as_external_data=True, size_threshold=0,
                        all_tensors_to_one_file=True, location="model.data")
        return str(path)

    def _check_provider(self, provider: str, requested: list[str]) -> None:
        if _CUDA not in requested or _CUDA in self.providers:
            return
        if provider == "cuda":
            self.close()
            raise ProviderError(
                f"CUDA was requested but the session runs on {', '.join(self.providers)}; "
                "install onnxruntime-gpu with matching CUDA 12/13 and cuDNN 9 libraries, "
                "or use provider 'cpu'"
            )
        log.warning("CUDA is not usable here; running on CPU")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the session and any temporary files."""
        self.__dict__.pop("_session", None)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def run(self, feeds: Mapping[str, NDArray[np.generic]], outputs: Sequence[str] | None = None,
            *, max_batch: int | None = None, split: bool = True
            ) -> dict[str, NDArray[np.generic]]:
        """Run the model, splitting the batch (axis 0 of every feed) into chunks of ``max_batch``.

        Args:
            feeds: input name -> array, batch first.
            outputs: output names to fetch (default: all graph outputs).
            max_batch: largest batch per call (None: the whole batch at once).
            split: False runs the feeds as given in one call (inputs whose first axes differ,
                e.g. images plus a row -> image index); the caller sizes the call.

        Returns:
            Output name -> array, the chunks concatenated along axis 0.

        Raises:
            InputError: a feed name, dtype or shape the model does not accept.
        """
        names = list(outputs) if outputs is not None else list(self.output_names)
        self._check_feeds(feeds)
        if not split:
            return self._run_once(feeds, names)
        total = _batch_size(feeds)
        fixed = self._fixed_batch()  # e.g. Caffe2 zoo models take exactly one image per run
        step = min(v for v in (max_batch, fixed, total) if v) if total else total
        if not step or step >= total:
            return self._run_once(feeds, names)
        parts = [self._run_once({k: v[i:i + step] for k, v in feeds.items()}, names)
                 for i in range(0, total, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in names}

    def _fixed_batch(self) -> int | None:
        sizes = {i.shape[0] for i in self._session.get_inputs()
                 if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
        return min(sizes) if sizes else None

    def _check_feeds(self, feeds: Mapping[str, NDArray[np.generic]]) -> None:
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise InputError(
                f"inputs {sorted(feeds)} do not fit the model, which takes "
                f"{list(self.input_names)}; missing {missing}, unknown {extra}"
            )

    def _run_once(self, feeds: Mapping[str, NDArray[np.generic]],
                  names: list[str]) -> dict[str, NDArray[np.generic]]:
        try:
            if self.on_cuda:
                return self._run_bound(feeds, names)
            values = self._session.run(names, dict(feeds))
        except Exception as err:
            if not _is_ort_error(err):
                raise
            if isinstance(err, ort.capi.onnxruntime_pybind11_state.InvalidArgument):
                raise InputError(
                    f"onnxruntime rejected the input of {self.name}: {ort_message(err)}; "
                    f"{self.name} expects {self._describe_inputs()}") from err
            raise ModelError(
                f"onnxruntime failed running {self.name}: {ort_message(err)}; check the input "
                "size and the model (onnx.checker.check_model), or try provider 'cpu'") from err
        return dict(zip(names, values, strict=True))

    def _run_bound(self, feeds: Mapping[str, NDArray[np.generic]],
                   names: list[str]) -> dict[str, NDArray[np.generic]]:
        """Run with IO binding: inputs copied once, outputs left on the device then copied."""
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cuda")
        self._session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return dict(zip(names, values, strict=True))

    def _describe_inputs(self) -> str:
        return "; ".join(f"{i.name} {i.type} {i.shape}" for i in self._session.get_inputs())


def _batch_size(feeds: Mapping[str, NDArray[np.generic]]) -> int:
    sizes = {v.shape[0] for v in feeds.values() if v.ndim}
    if len(sizes) > 1:
        raise InputError(f"feeds have different batch sizes {sorted(sizes)}; give every input "
                         "the same first dimension")
    return sizes.pop() if sizes else 0
