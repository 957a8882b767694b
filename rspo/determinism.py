"""What makes a CPU run give the same bytes: thread count, kernel ISA level, deterministic algorithms.

Measured with ``benchmarks/determinism.py`` (``benchmarks/README.md``, "Determinism"): on one machine
the same config and seeds give byte-identical generations, log-probs and weights. What changes the
bytes is the instruction set of the kernels: ATen picks its vectorised kernels by the CPU's ISA
(AVX-512, AVX2 or scalar: ``torch.backends.cpu.get_cpu_capability()``), and MKL and oneDNN pick
theirs the same way. A wider vector sums in another order, so an AVX-512 machine and an AVX2 one
round differently (SmolLM2's fp32 logits by up to 5e-5), and sampled tokens diverge over a run.

``cpu_isa: avx2`` (config key, passed to the jobs as ``RSPO_CPU_ISA``; ``rspo --cpu-isa``) caps all three libraries at AVX2 through their
environment variables, which must be set before torch is imported, so that every x86-64 machine with
AVX2 runs the same kernels; ``native`` (the default) lets each machine use its best ones.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from rspo.errors import RSPOError

# the environment variables that cap each library's kernels at one instruction set
ISA_ENV: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
CPU_ISAS = tuple(ISA_ENV)
# the default of ``rspo --cpu-isa``: the workflow sets it from the config key ``cpu_isa`` for its jobs
CPU_ISA_ENV = "RSPO_CPU_ISA"
# what the manifest records of the environment (thread counts and the ISA caps)
RECORDED_ENV = (
    "RSPO_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def torch_loaded() -> bool:
    return "torch" in sys.modules


def pin_cpu_isa(level: str, environ: dict[str, str] | None = None) -> None:
    """Cap torch's, MKL's and oneDNN's kernels at ``level`` (``native``: leave them alone).

    Sets the variables of :data:`ISA_ENV` in ``environ`` (``os.environ``). They are read when torch
    loads, so this must run before torch is imported; it is an error otherwise, and on a CPU
    that lacks the level (the kernels would stop with an illegal instruction)."""
    environ = os.environ if environ is None else environ
    if level not in ISA_ENV:
        raise RSPOError(f"cpu_isa: unknown level {level!r} (one of {', '.join(CPU_ISAS)})")
    wanted = ISA_ENV[level]
    if not wanted:
        return
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RSPOError(
            f"cpu_isa: {level} is an x86-64 instruction set, this machine is {platform.machine()}"
        )
    flags = cpu_flags()
    if flags and not {"avx2", "fma"} <= flags:
        raise RSPOError(f"cpu_isa: {level}: this CPU has no AVX2/FMA; use cpu_isa: native")
    if torch_loaded() and any(environ.get(k) != v for k, v in wanted.items()):
        raise RSPOError(f"cpu_isa: {level} must be set before torch is imported (rspo --cpu-isa does so)")
    environ.update(wanted)


def deterministic_torch() -> None:
    """Ask torch for deterministic kernels where it has a choice (warning, not failing, where it has none).

    On CPU every kernel rspo uses already is; on CUDA this picks deterministic algorithms, which
    need ``CUBLAS_WORKSPACE_CONFIG`` (set here unless the environment sets it)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def settings() -> dict:
    """What the run's numbers depend on besides config and code: CPU, kernel ISA, threads (manifest)."""
    out: dict = {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
    }
    torch = sys.modules.get("torch")
    if torch is not None:  # only when the step imported it (importing it here would cost seconds)
        out.update(
            torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
            torch_threads=torch.get_num_threads(),
            deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        )
    return out
