"""Which implementation runs the spiking neurons, and why.

SpikingJelly exists in two generations with different GPU paths:

* 0.0.0.0.14 (``pip install "snn-stp[cupy]"``): neurons take ``backend="torch" | "cupy"``; the
  CuPy multi-step CUDA kernels need a usable CuPy and a CUDA device.
* 2.x (the default install): no ``backend`` argument; on a CUDA device it picks native CUDA
  (only when built from source), else Triton, else torch, per process, steered by the
  environment variables ``SJ_<NEURON>_CUDA_IMPLEMENTATION`` read when SpikingJelly loads.

``resolve_backend`` turns a request (``auto``, ``cupy``, ``triton``, ``torch``) and a device into
the implementation that will really run, or an error that names the real cause (no GPU, CuPy
import failed with X, CuPy cannot reach the driver, SpikingJelly version without CuPy kernels)
— never a silent fallback for an explicit request.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

import torch

from ..errors import DeviceError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cupy", "triton", "torch")
#: SpikingJelly 2.x neuron type names, as ``functional.neuron_implementation`` knows them.
SJ2_NEURON_TYPES = {"lif": "lif", "if": "if", "plif": "plif"}


class BackendUnavailableError(DeviceError, RuntimeError):
    """An explicitly requested neuron backend cannot run here; the message says why."""


@dataclass(frozen=True)
class BackendChoice:
    """The neuron implementation a model runs with.

    Attributes:
        requested: what was asked for (``auto``, ``cupy``, ``triton``, ``torch``).
        implementation: what runs: ``cupy`` (SpikingJelly 0.0.0.0.14 CUDA kernels), ``cuda``
            or ``triton`` (SpikingJelly 2.x GPU kernels), ``torch`` (reference, any device).
        device: the device the neurons run on.
        spikingjelly: the installed SpikingJelly version.
        reason: why this implementation, including why better ones were not usable.
    """

    requested: str
    implementation: str
    device: str
    spikingjelly: str
    reason: str


def spikingjelly_version() -> str:
    return metadata.version("spikingjelly")


def is_legacy_spikingjelly(version: str | None = None) -> bool:
    """True for the 0.0.0.0.x generation (neurons with a ``backend`` argument and CuPy kernels)."""
    return (version or spikingjelly_version()).startswith("0.0.0.0")


@dataclass(frozen=True)
class CupyStatus:
    usable: bool
    reason: str


@lru_cache(maxsize=None)
def probe_cupy() -> CupyStatus:
    """Import CuPy and run one operation on the GPU; report the first real failure.

    "Importable" is not "usable": without a GPU or with too old a driver, ``import cupy``
    succeeds and the first operation raises (e.g. ``cudaErrorInsufficientDriver``).
    """
    try:
        cupy = importlib.import_module("cupy")
    except Exception as error:  # ImportError, or a broken CUDA library raising anything else
        return CupyStatus(False, f"import cupy failed: {type(error).__name__}: {error}")
    version = getattr(cupy, "__version__", "?")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return CupyStatus(False, f"cupy {version} imported but sees no CUDA device")
        int(cupy.arange(4).sum())
        runtime = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as error:
        return CupyStatus(False, f"cupy {version} imported but cannot run on a GPU: {type(error).__name__}: {error}")
    note = ""
    if torch.version.cuda and str(runtime // 1000) != torch.version.cuda.split(".")[0]:
        note = (f"; note: CuPy uses CUDA {runtime // 1000}.x but torch was built for CUDA {torch.version.cuda} "
                "(install the matching cupy-cudaXXx wheel)")
    return CupyStatus(True, f"cupy {version} runs on {count} CUDA device(s){note}")


@lru_cache(maxsize=None)
def probe_legacy_cupy_kernels() -> CupyStatus:
    """CuPy usable and SpikingJelly 0.0.0.0.14's CuPy kernels really run: one multi-step LIF layer,
    forward and backward, on the GPU (the result is kept for the process)."""
    status = probe_cupy()
    if not status.usable:
        return status
    neuron_module = importlib.import_module("spikingjelly.activation_based.neuron")
    if getattr(neuron_module, "neuron_kernel", None) is None:
        return CupyStatus(False, f"{status.reason}, but spikingjelly's CuPy kernel module failed to load "
                                 "(see the spikingjelly.activation_based.neuron log message)")
    reason = status.reason + _restore_numpy_int_alias()
    try:
        cell = neuron_module.LIFNode(step_mode="m", backend="cupy")
        x = torch.rand(2, 1, 8, device="cuda", requires_grad=True)
        cell(x).sum().backward()
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return CupyStatus(False, f"{reason}, but spikingjelly's CuPy LIF kernel failed: {type(error).__name__}: {first_line}")
    return CupyStatus(True, reason)


def _restore_numpy_int_alias() -> str:
    """Give NumPy back the ``np.int`` alias if it lacks it; a note for the backend's reason, or "".

    SpikingJelly 0.0.0.0.14's kernel wrapper (``auto_cuda/base.py``) compares dtypes with ``np.int``,
    which NumPy 1.24 removed, so with any current NumPy every CuPy neuron call raises AttributeError
    (SpikingJelly issues #583 and #595, fixed after that release; seen here on an H200). The alias
    always meant the builtin ``int``, so restoring it changes nothing else.
    """
    numpy = importlib.import_module("numpy")
    if hasattr(numpy, "int"):
        return ""
    numpy.int = int
    return f"; numpy {numpy.__version__} lacks np.int, which spikingjelly 0.0.0.0.14's kernels use: restored as int"


def resolve_backend(requested: str, device: torch.device | str, neuron_kind: str = "lif") -> BackendChoice:
    """The implementation that ``requested`` gives on ``device``, or ``BackendUnavailableError``."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown neuron backend {requested!r}; valid: {', '.join(BACKENDS)}")
    device = torch.device(device)
    version = spikingjelly_version()
    legacy = is_legacy_spikingjelly(version)

    def choice(implementation: str, reason: str) -> BackendChoice:
        return BackendChoice(requested, implementation, str(device), version, reason)

    if device.type != "cuda":
        if requested in ("cupy", "triton"):
            causes = [f"the neurons are on {device}, and {requested} kernels need a CUDA device"]
            if not torch.cuda.is_available():
                causes.append("torch sees no CUDA device")
            if requested == "cupy":
                status = probe_cupy() if legacy else None
                causes.append(_no_cupy_kernels(version) if not legacy else status.reason)
            if requested == "triton" and legacy:
                causes.append(_no_triton_kernels(version))
            raise BackendUnavailableError(f"neuron backend {requested!r} cannot run: " + "; ".join(causes))
        return choice("torch", f"torch reference implementation on {device}")

    if legacy:
        if requested == "triton":
            raise BackendUnavailableError(f"neuron backend 'triton' cannot run: {_no_triton_kernels(version)}")
        if requested == "torch":
            return choice("torch", "requested torch")
        status = probe_legacy_cupy_kernels()
        if status.usable:
            return choice("cupy", status.reason)
        if requested == "cupy":
            raise BackendUnavailableError(f"neuron backend 'cupy' cannot run: {status.reason}")
        return choice("torch", f"CuPy kernels unusable ({status.reason}); spikingjelly {version} has no other GPU kernels")

    # SpikingJelly 2.x chooses per process; report its choice and check it against the request.
    if requested == "cupy":
        raise BackendUnavailableError(f"neuron backend 'cupy' cannot run: {_no_cupy_kernels(version)}")
    functional = importlib.import_module("spikingjelly.activation_based.functional")
    kind = SJ2_NEURON_TYPES[neuron_kind]
    info = functional.neuron_implementation(kind, device)
    implementation = str(info["implementation"]).replace("torch-reference", "torch")
    unavailable = "; ".join(f"{k}: {v}" for k, v in dict(info.get("unavailable", {})).items())
    detail = f"spikingjelly {version} selected {implementation}" + (f" (unavailable: {unavailable})" if unavailable else "")
    if requested in ("auto", implementation):
        return choice(implementation, detail)
    variable = f"SJ_{kind.upper()}_CUDA_IMPLEMENTATION"
    raise BackendUnavailableError(
        f"neuron backend {requested!r} cannot run: {detail}. SpikingJelly 2.x picks one implementation per "
        f"process; start the process with {variable}={requested} to force it")


def _no_cupy_kernels(version: str) -> str:
    return (f"spikingjelly {version} has no CuPy kernels (they exist only in spikingjelly 0.0.0.0.14: "
            "pip install \"snn-stp[cupy]\")")


def _no_triton_kernels(version: str) -> str:
    return f"spikingjelly {version} has no Triton kernels (they come with spikingjelly >= 2: pip install -U spikingjelly)"
