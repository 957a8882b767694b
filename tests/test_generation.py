"""rspo generate: the transformers backend (tiny random Llama), the vllm backend (a fake module)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from conftest import f32_sum_tol

from rspo.config import GenerateConfig, SamplingConfig
from rspo.errors import RSPOError

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea and the waves that roll in every day.",
    "List five fruits.",
]
IDS = ["p0", "p1", "p2"]


def cfg(n=1, temperature=0.0, top_p=1.0, max_new_tokens=6, seed=0, batch_size=8, seeding="per_sample",
        **kw) -> GenerateConfig:
    return GenerateConfig(
        batch_size=batch_size,
        dtype="fp32",
        sampling=SamplingConfig(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                                seeding=seeding),
        **kw,
    )


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    """The tiny Llama with its matrices scaled up 10x: at the default init (std 0.02) attention is
    near-uniform and greedy decoding just repeats the last token, whatever the context, so padding
    mistakes would go unseen. Scaled, the next token depends on the whole prompt."""
    import torch

    from rspo.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(tiny_model_dir), dtype="fp32", device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return model, load_tokenizer(str(tiny_model_dir))


def chatml_ids(tokenizer, prompt: str) -> list[int]:
    """The ChatML prompt of the fixture tokenizer, written out by hand."""
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Oracle: transformers' own generate() on the prompt alone (no padding)."""
    import torch

    ids = torch.tensor([chatml_ids(tokenizer, prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def run(lm, config, ids=IDS, prompts=PROMPTS):
    from rspo.generation import generate_with_model

    model, tok = lm
    return generate_with_model(model, tok, ids, prompts, config, progress=False)


# --------------------------------------------------------------------------- transformers backend


def test_greedy_in_a_padded_batch_equals_each_prompt_alone_and_hf_generate(lm):
    model, tok = lm
    lengths = {len(chatml_ids(tok, p)) for p in PROMPTS}
    assert len(lengths) == 3  # the batch really is padded
    batched = run(lm, cfg(max_new_tokens=8))
    for pid, prompt, outs in zip(IDS, PROMPTS, batched):
        alone = run(lm, cfg(max_new_tokens=8), [pid], [prompt])[0]
        assert outs == alone
        assert outs[0].text == hf_greedy(model, tok, prompt, 8)


def test_k_samples_token_counts_and_length_finish(lm):
    outs = run(lm, cfg(n=4, temperature=1.0, max_new_tokens=5))
    assert [len(o) for o in outs] == [4, 4, 4]
    for o in outs:
        for c in o:
            if c.finish_reason == "length":
                assert c.num_tokens == 5
            else:
                assert c.finish_reason == "stop" and 1 <= c.num_tokens <= 5
    # 4 samples at temperature 1 from a near-uniform 512-token model are not all equal
    assert len({c.text for c in outs[0]}) > 1


def test_seeded_determinism_and_independence_of_batching_and_k(lm):
    base = run(lm, cfg(n=3, temperature=1.0, top_p=0.9, seed=7, batch_size=3))
    assert run(lm, cfg(n=3, temperature=1.0, top_p=0.9, seed=7, batch_size=3)) == base
    # other batch size, other prompt order, fewer samples: each (prompt, k) keeps its sample
    one_by_one = run(lm, cfg(n=3, temperature=1.0, top_p=0.9, seed=7, batch_size=1))
    assert one_by_one == base
    reordered = run(lm, cfg(n=2, temperature=1.0, top_p=0.9, seed=7, batch_size=2), IDS[::-1], PROMPTS[::-1])
    assert reordered[::-1] == [o[:2] for o in base]
    other = run(lm, cfg(n=3, temperature=1.0, top_p=0.9, seed=8, batch_size=3))
    assert [c.text for o in other for c in o] != [c.text for o in base for c in o]
    # the stream is per (prompt id, sample): the same text under two ids gets different samples
    twins = run(lm, cfg(n=1, temperature=1.0, seed=7), ["a", "b"], [PROMPTS[0], PROMPTS[0]])
    assert twins[0] != twins[1]


def test_stop_on_eos_text_count_and_rows_leaving_the_batch(lm):
    """Force the eos as the 3rd token of sample 0 (a forward hook on the logits): it ends with
    finish "stop", 3 tokens and the text of its first 2; sample 1 runs on to max_new_tokens."""
    model, tok = lm
    calls = {"n": 0}

    def force_eos(module, args, output):
        if calls["n"] == 2:  # call 0 = prefill -> token 1; call 2 -> token 3
            output.logits[0, -1, tok.eos_token_id] = 1e4
        calls["n"] += 1

    handle = model.register_forward_hook(force_eos)
    try:
        outs = run(lm, cfg(n=2, max_new_tokens=7), ["p0"], [PROMPTS[0]])[0]
    finally:
        handle.remove()
    assert outs[0].finish_reason == "stop" and outs[0].num_tokens == 3
    assert outs[0].text == hf_greedy(model, tok, PROMPTS[0], 2)
    assert outs[1].finish_reason == "length" and outs[1].num_tokens == 7
    assert outs[1].text == hf_greedy(model, tok, PROMPTS[0], 7)


def test_chat_template_left_padding_and_prompt_truncation_keep_the_end(lm):
    model, tok = lm
    seen = []

    def capture(module, args, kwargs):
        if not seen:
            seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))

    handle = model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        run(lm, cfg(max_new_tokens=1), IDS[:2], PROMPTS[:2])
    finally:
        handle.remove()
    ids, mask = seen[0]
    width = ids.shape[1]
    expected = sorted((chatml_ids(tok, p) for p in PROMPTS[:2]), key=len, reverse=True)  # the batch's order
    assert width == len(expected[0]) > len(expected[1])
    for row, exp in enumerate(expected):
        pad = width - len(exp)
        assert ids[row].tolist() == [tok.pad_token_id] * pad + exp
        assert mask[row].tolist() == [0] * pad + [1] * len(exp)

    from rspo.generation import prompt_token_ids

    assert prompt_token_ids(tok, [PROMPTS[1]], 5) == [chatml_ids(tok, PROMPTS[1])[-5:]]


def test_sample_next_token_top_p_and_inverse_cdf():
    import torch

    from rspo.generation import sample_next_token

    # probs 0.5, 0.3, 0.2 (temperature 1): top_p=0.6 keeps {0.5, 0.3} -> cdf 0.625, 1.0 over tokens 1, 2
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(4, 1)
    u = torch.tensor([0.0, 0.62, 0.63, 0.999])
    assert sample_next_token(logits, SamplingConfig(temperature=1.0, top_p=0.6), u).tolist() == [1, 1, 2, 2]
    # top_p=1 keeps all, cdf in vocabulary order: 0.2, 0.7, 1.0
    u = torch.tensor([0.19, 0.21, 0.69, 0.71])
    assert sample_next_token(logits, SamplingConfig(temperature=1.0, top_p=1.0), u).tolist() == [0, 1, 1, 2]
    # temperature 2 flattens: probs proportional to sqrt(0.2, 0.5, 0.3) = 0.447, 0.707, 0.548 (sum 1.702)
    # -> 0.263, 0.415, 0.322; top_p=0.5 keeps tokens 1 (0.415) and 2 (mass before 0.415 < 0.5)
    u = torch.tensor([0.55, 0.57, 0.0, 0.99])  # cdf over kept: 0.415/0.737 = 0.563, 1.0
    assert sample_next_token(logits, SamplingConfig(temperature=2.0, top_p=0.5), u).tolist() == [1, 2, 1, 2]
    # temperature 0 is greedy
    assert sample_next_token(logits, SamplingConfig(temperature=0.0), None).tolist() == [1] * 4


def test_top_p_candidates_shortcut_equals_a_full_sort():
    """Rows with a small nucleus use the top-256 candidates, flat rows sort everything; both give
    the token a plain numpy nucleus sampler picks for the same uniform."""
    import numpy as np
    import torch

    from rspo import generation

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 1000, generator=gen)
    logits[:8] *= 8.0  # peaked rows: nucleus well inside 256 tokens; the other 8 need > 256
    u = torch.rand(16, generator=gen)
    s = SamplingConfig(temperature=0.7, top_p=0.9)
    got = generation.sample_next_token(logits, s, u).tolist()

    expected, nucleus_sizes = [], []
    for row, ur in zip(logits.numpy().astype(np.float64), u.numpy().astype(np.float64)):
        p = np.exp(row / 0.7 - (row / 0.7).max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        ps = p[order]
        keep = (np.cumsum(ps) - ps) < 0.9
        nucleus_sizes.append(int(keep.sum()))
        cdf = np.cumsum(ps * keep)
        expected.append(int(order[np.searchsorted(cdf, ur * cdf[-1], side="right")]))
    assert max(nucleus_sizes[:8]) < 256 < min(nucleus_sizes[8:])
    assert got == expected


def test_generate_cli_writes_a_valid_responses_table(tiny_model_dir, tmp_path):
    import json

    from rspo.artifacts import read_table, write_table
    from rspo.cli import main

    write_table(tmp_path / "prompts.jsonl", [{"prompt_id": i, "prompt": p} for i, p in zip(IDS, PROMPTS)], "prompts")
    params = {"batch_size": 2, "dtype": "fp32",
              "sampling": {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 4, "seed": 3}}
    argv = ["generate", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "prompts.jsonl"),
            "--out", str(tmp_path / "responses.jsonl"), "--params", json.dumps(params), "--no-progress"]
    assert main(argv) == 0
    rows = read_table(tmp_path / "responses.jsonl", "responses")
    assert [r["prompt_id"] for r in rows] == IDS and [r["prompt"] for r in rows] == PROMPTS
    for r in rows:
        assert len(r["responses"]) == len(r["num_tokens"]) == len(r["finish_reasons"]) == len(r["token_ids"]) == 2
        assert [len(ids) for ids in r["token_ids"]] == r["num_tokens"]
        assert r["generator"] == str(tiny_model_dir)
        assert r["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 4, "seed": 3, "n": 2,
                                 "backend": "transformers", "seeding": "per_sample"}
    first = (tmp_path / "responses.jsonl").read_text()
    assert main(argv) == 0
    assert (tmp_path / "responses.jsonl").read_text() == first


@pytest.mark.parametrize(
    "bad, word",
    [({"backend": "tgi"}, "backend"), ({"sampling": {"top_p": 0}}, "top_p"), ({"sampling": {"n": 0}}, "sampling.n"),
     ({"sampling": {"temperature": -1}}, "temperature")],
)
def test_invalid_config_is_a_clear_error(bad, word):
    from rspo.config import from_dict
    from rspo.generation import check_config

    with pytest.raises(RSPOError, match=word):
        check_config(from_dict(GenerateConfig, bad))


# --------------------------------------------------------------------------- vllm backend


class _FakeVLLM:
    """Records what rspo asks of vLLM and answers with canned completions (``sample(i, j, params)`` ->
    (text, token_ids, finish_reason) of sample j of prompt i, when given)."""

    def __init__(self, finish="stop", sample=None):
        self.module = types.ModuleType("vllm")
        self.calls = {}
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                fake.calls["sampling_params"] = kwargs
                fake.calls.setdefault("all_sampling_params", []).append(kwargs)
                self.n, self.seed = kwargs["n"], kwargs.get("seed")

        class LLM:
            def __init__(self, **kwargs):
                fake.calls["llm"] = kwargs

            def generate(self, prompts, params, use_tqdm=True):
                fake.calls.setdefault("generate", []).append((prompts, params))
                out = []
                for i, _ in enumerate(prompts):
                    samples = []
                    for j in reversed(range(params.n)):  # out of order on purpose
                        if sample is None:
                            text, ids, why = f"r{i}-{j}", list(range(j + 2)), "length" if j == 0 else finish
                        else:
                            text, ids, why = sample(i, j, params)
                        samples.append(types.SimpleNamespace(index=j, text=text, token_ids=ids, finish_reason=why))
                    out.append(types.SimpleNamespace(outputs=samples))
                return out

        self.module.SamplingParams = SamplingParams
        self.module.LLM = LLM


def test_vllm_backend_builds_one_request_per_prompt_with_n_k(monkeypatch, tiny_model_dir):
    from rspo.generation import generate
    from rspo.models import load_tokenizer

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    config = cfg(n=3, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=11, backend="vllm",
                 tensor_parallel_size=2, gpu_memory_utilization=0.5, max_prompt_length=9)
    rows = generate(str(tiny_model_dir), [{"prompt_id": i, "prompt": p} for i, p in zip(IDS, PROMPTS)], config)

    assert fake.calls["sampling_params"] == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 16, "seed": 11}
    llm = fake.calls["llm"]
    assert (llm["model"], llm["tensor_parallel_size"], llm["dtype"], llm["gpu_memory_utilization"]) == (
        str(tiny_model_dir), 2, "float32", 0.5)
    assert len(fake.calls["generate"]) == 1  # one call, one request per prompt
    tok = load_tokenizer(str(tiny_model_dir))
    sent = fake.calls["generate"][0][0]
    assert sent == [{"prompt_token_ids": chatml_ids(tok, p)[-9:]} for p in PROMPTS]

    assert [r["prompt_id"] for r in rows] == IDS
    assert rows[1]["responses"] == ["r1-0", "r1-1", "r1-2"]
    assert rows[1]["token_ids"] == [[0, 1], [0, 1, 2], [0, 1, 2, 3]]  # CompletionOutput.token_ids, in order
    assert rows[1]["num_tokens"] == [2, 3, 4]
    assert rows[1]["finish_reasons"] == ["length", "stop", "stop"]
    assert rows[1]["sampling"]["backend"] == "vllm" and rows[1]["generator"] == str(tiny_model_dir)


def test_vllm_unknown_finish_reason_is_an_error(monkeypatch, tiny_model_dir):
    from rspo.generation import generate

    monkeypatch.setitem(sys.modules, "vllm", _FakeVLLM(finish="abort").module)
    with pytest.raises(RSPOError, match="abort"):
        generate(str(tiny_model_dir), [{"prompt_id": "a", "prompt": "Hi"}], cfg(n=2, backend="vllm"))


def test_vllm_absent_is_a_clear_error(monkeypatch, tiny_model_dir):
    from rspo.generation import generate

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(RSPOError, match=r"pip install 'rspo\[gpu\]'"):
        generate(str(tiny_model_dir), [{"prompt_id": "a", "prompt": "Hi"}], cfg(backend="vllm"))


def test_importing_rspo_never_imports_vllm(tmp_path):
    """A vllm that explodes on import sits on the path: rspo, rspo.generation (which does not import
    torch either) and the CLI parser (which imports every step module) must not touch it."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('vllm was imported')\n")
    code = ("import sys, rspo, rspo.generation; assert 'vllm' not in sys.modules; "
            "assert 'torch' not in sys.modules, 'rspo.generation imported torch'; "
            "import rspo.cli; rspo.cli.build_parser(); assert 'vllm' not in sys.modules")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- seeding: the authors' passes


def test_passes_seeding_uses_the_authors_seeds_on_the_transformers_backend(lm):
    """seeding: passes = sample k of EVERY prompt drawn from one stream seeded seed + 50 k (the
    authors' generate.py: K passes with SamplingParams(seed=50 p))."""
    passes = dict(temperature=1.0, top_p=0.9, seeding="passes")
    base = run(lm, cfg(n=3, seed=0, **passes))
    # samples 1, 2 of seed 0 are samples 0, 1 of seed 50 (passes 50, 100); per-sample seeding would differ
    assert [o[1:] for o in base] == run(lm, cfg(n=2, seed=50, **passes))
    assert len({c.text for c in base[1]}) > 1  # the passes are not one stream repeated
    # the stream belongs to the pass, not to the prompt: the same text under two ids gets the same samples
    twins = run(lm, cfg(n=2, seed=0, **passes), ["a", "b"], [PROMPTS[0], PROMPTS[0]])
    assert twins[0] == twins[1] == base[0][:2]


def test_vllm_passes_seeding_runs_k_passes_with_seeds_0_50_100(monkeypatch, tiny_model_dir):
    from rspo.generation import generate

    fake = _FakeVLLM(sample=lambda i, j, params: (f"p{i}-seed{params.seed}", [params.seed, i], "stop"))
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    rows = generate(str(tiny_model_dir), [{"prompt_id": i, "prompt": p} for i, p in zip(IDS, PROMPTS)],
                    cfg(n=3, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=0, backend="vllm", seeding="passes"))
    assert [kw["seed"] for kw in fake.calls["all_sampling_params"]] == [0, 50, 100]
    assert all(kw["n"] == 1 for kw in fake.calls["all_sampling_params"])
    assert len(fake.calls["generate"]) == 3  # one call per pass, every prompt in each
    assert all(len(prompts) == 3 for prompts, _ in fake.calls["generate"])
    assert rows[2]["responses"] == ["p2-seed0", "p2-seed50", "p2-seed100"]
    assert rows[2]["token_ids"] == [[0, 2], [50, 2], [100, 2]]
    assert rows[2]["sampling"]["seeding"] == "passes"


def test_vllm_pinned_revision_samples_the_pinned_snapshot(monkeypatch, fake_hub_cache):
    from rspo.generation import generate

    repo, _, commit_b = fake_hub_cache
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    rows = generate(f"{repo}@{commit_b}", [{"prompt_id": "a", "prompt": "Hi"}], cfg(n=1, backend="vllm"))
    llm = fake.calls["llm"]
    assert llm["model"].endswith(f"models--rspo-test--tiny/snapshots/{commit_b}") and llm["tokenizer"] == llm["model"]
    assert rows[0]["generator"] == f"{repo}@{commit_b}"


# --------------------------------------------------------------------------- sampled ids, SentencePiece-style

MISTRAL_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A SentencePiece-style tokenizer (BPE behind a Metaspace pre-tokenizer that prepends the word-start
    marker, as Mistral / Llama-2 / Gemma) with a Mistral-like chat template, and a tiny Llama for it."""
    from conftest import _CORPUS, build_tiny_llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=list("[]/INST"))
    tok.train_from_iterator(_CORPUS + ["[INST] [/INST]"] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.chat_template = MISTRAL_LIKE_TEMPLATE
    d = tmp_path_factory.mktemp("sp_llama")
    build_tiny_llama(d, fast, seed=4)
    return d


def _planned_ids(tok) -> list[int]:
    """A word-internal piece (no word-start marker) then a whole word, as a model may sample them."""
    vocab = tok.get_vocab()
    piece = next(t for t in sorted(vocab) if t.isalpha() and len(t) > 1)  # e.g. "an": no leading marker
    word = next(t for t in sorted(vocab) if t.startswith("\u2581") and t[1:].isalpha() and len(t) > 3)
    return [vocab[piece], vocab[word]]


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_scored_ids_are_exactly_the_sampled_ids(backend, sp_model, monkeypatch):
    """Generation keeps the ids it sampled; the pair carries them; logps scores exactly them after the
    prompt's ids: the EOS a "stop" response sampled once (not doubled), none for a "length" response.
    Tokenizing the response TEXT alone would give other ids (the word-start marker in front)."""
    import torch

    import rspo.models
    from rspo.artifacts import ArtifactError
    from rspo.chat import encode_prompt
    from rspo.commands.pairs import build_pairs
    from rspo.generation import generate
    from rspo.logps import encode_pairs, pair_logps

    tok = rspo.models.load_tokenizer(str(sp_model))
    plan = _planned_ids(tok)
    stop_ids, length_ids = plan + [tok.eos_token_id], plan  # sample 0 ends with eos, sample 1 hits the limit
    prompt = "What is the capital of France?"

    if backend == "transformers":
        real_load = rspo.models.load_causal_lm
        length_ids = plan + [plan[0]]  # max_new_tokens is one more than the plan

        def forced(ref, **kw):  # the model "samples" the plan, then eos (sample 0) or plan[0] (sample 1)
            model = real_load(ref, **kw)
            calls = {"n": 0}

            def hook(module, args, output):
                n, rows = calls["n"], output.logits.shape[0]
                calls["n"] += 1
                wanted = [stop_ids[n], length_ids[n]][:rows] if n == 2 else [plan[min(n, 1)]] * rows
                output.logits[:, -1, :] = -1e4
                for r, w in enumerate(wanted):
                    output.logits[r, -1, w] = 1e4

            model.register_forward_hook(hook)
            return model

        monkeypatch.setattr(rspo.models, "load_causal_lm", forced)
        config = cfg(n=2, temperature=0.0, max_new_tokens=len(length_ids))
    else:
        def sample(i, j, params):  # vLLM's text keeps the first token's leading space
            ids = stop_ids if j == 0 else length_ids
            return " " + tok.decode(ids, skip_special_tokens=True), list(ids), "stop" if j == 0 else "length"

        monkeypatch.setitem(sys.modules, "vllm", _FakeVLLM(sample=sample).module)
        config = cfg(n=2, backend="vllm")
    (row,) = generate(str(sp_model), [{"prompt_id": "p", "prompt": prompt}], config)
    monkeypatch.undo()
    assert row["token_ids"] == [stop_ids, length_ids] and row["finish_reasons"] == ["stop", "length"]
    for text, ids in zip(row["responses"], row["token_ids"]):
        alone = tok(text, add_special_tokens=False)["input_ids"]
        assert alone[: len(plan)] != ids[: len(plan)]  # the text alone starts with another token

    prefs = [{"prompt_id": "p", "judge": "test", "logits": [[0.0, 1.0], [-1.0, 0.0]]}]
    pairs, _ = build_pairs([row], prefs, "responses", "preferences")
    assert (pairs[0]["chosen_token_ids"], pairs[0]["rejected_token_ids"]) == (stop_ids, length_ids)
    with pytest.raises(ArtifactError, match="token_ids must be 2 lists"):
        build_pairs([{**row, "token_ids": row["token_ids"][:1]}], prefs, "responses", "preferences")
    chosen, rejected = encode_pairs(tok, pairs, max_length=64, max_prompt_length=32)
    prompt_ids = encode_prompt(tok, prompt)
    assert list(chosen.input_ids) == prompt_ids + stop_ids and chosen.prompt_len == len(prompt_ids)
    assert list(rejected.input_ids) == prompt_ids + length_ids  # no eos appended to a "length" response

    model = rspo.models.load_causal_lm(str(sp_model), dtype="fp32", device="cpu")
    (scored,) = pair_logps(model, tok, pairs, max_length=64, max_prompt_length=32, batch_size=2)
    for ids, key in ((stop_ids, "chosen"), (length_ids, "rejected")):
        full = torch.tensor([prompt_ids + ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=full).logits[0].double(), dim=-1)
        want = sum(logp[len(prompt_ids) + t - 1, i].item() for t, i in enumerate(ids))
        # as test_logps: a padded float32 batch vs the float64 loop, f32_sum_tol (~1e-5 here), far below
        # the difference of scoring other ids (a whole token's log-prob, ~log 320 = 5.8)
        assert scored[f"logp_{key}"] == pytest.approx(want, rel=0, abs=f32_sum_tol(want, len(ids)))
        assert scored[f"{key}_tokens"] == len(ids)


def test_a_response_without_ids_is_tokenized_jointly_with_its_prompt(sp_model):
    """A response TEXT (an external file, no ids) is tokenized after its prompt and split at the prompt
    boundary, so the word-start marker is not put in front of it; the EOS is appended (TRL)."""
    from rspo.chat import encode_prompt
    from rspo.logps import encode_group
    from rspo.models import load_tokenizer

    tok = load_tokenizer(str(sp_model))
    plan = _planned_ids(tok)
    text = tok.decode(plan)
    (enc,) = encode_group(tok, "List five fruits.", [text], max_length=64, max_prompt_length=32)
    assert list(enc.input_ids) == encode_prompt(tok, "List five fruits.") + plan + [tok.eos_token_id]
    assert tok(text, add_special_tokens=False)["input_ids"] != plan  # alone: another first token
