"""Sequence log-probs: tokenization, EOS, truncation, masking, padding invariance and the cache step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import f32_sum_tol  # noqa: E402

from rspo.artifacts import read_table, write_table  # noqa: E402
from rspo.chat import format_prompt  # noqa: E402
from rspo.logps import IGNORE_INDEX, collate, encode_group, sequence_logps  # noqa: E402

PAIRS = [
    {
        "prompt_id": "p0",
        "prompt": "Give me three tips for staying healthy.",
        "chosen": "Eat well, sleep enough and move every day.",
        "rejected": "No.",
        "chosen_index": 0,
        "rejected_index": 1,
        "p_chosen": 0.8,
        "p_rejected": 0.3,
        "scores": [1.0, -1.0],
    },
    {
        "prompt_id": "p1",
        "prompt": "What is the capital of France?",
        "chosen": "The capital of France is Paris.",
        "rejected": "It is a city in Europe, I think, maybe Lyon or Paris.",
        "chosen_index": 1,
        "rejected_index": 0,
        "p_chosen": 0.7,
        "p_rejected": 0.2,
        "scores": [-0.5, 0.5],
    },
    {
        "prompt_id": "p2",
        "prompt": "List five fruits.",
        "chosen": "apple, banana, cherry, mango and pear",
        "rejected": "apple",
        "chosen_index": 0,
        "rejected_index": 1,
        "p_chosen": 0.6,
        "p_rejected": 0.45,
        "scores": [0.2, -0.2],
    },
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from rspo.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from rspo.models import load_causal_lm

    return load_causal_lm(str(tiny_model_dir), dtype="fp32", device="cpu")


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_encode_uses_chat_template_and_appends_eos(tok):
    (enc,) = encode_group(tok, "What is the capital of France?", ["Paris."], max_length=1024, max_prompt_length=512)
    prompt_text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tok, "What is the capital of France?") == prompt_text
    prompt_ids = _ids(tok, prompt_text)
    assert enc.prompt_len == len(prompt_ids)
    assert list(enc.input_ids) == prompt_ids + _ids(tok, "Paris.") + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert enc.num_response_tokens == len(_ids(tok, "Paris.")) + 1  # the EOS counts


def test_truncation_keeps_prompt_end_then_cuts_responses(tok):
    prompt = "Explain why the sky is blue. " * 6
    long_resp = "Sunlight scatters off air molecules, and blue light scatters most. " * 4
    short_resp = "Blue."
    full_prompt = _ids(tok, format_prompt(tok, prompt))
    long_ids = _ids(tok, long_resp) + [tok.eos_token_id]
    short_ids = _ids(tok, short_resp) + [tok.eos_token_id]
    assert len(full_prompt) > 20 and len(long_ids) > 40

    # 1) the prompt alone is cut (keeping its END): prompt 20 + longest response fits in max_length
    max_len = 20 + len(long_ids)
    chosen, rejected = encode_group(tok, prompt, [long_resp, short_resp], max_length=max_len, max_prompt_length=20)
    assert chosen.prompt_len == rejected.prompt_len == 20
    assert list(chosen.input_ids) == full_prompt[-20:] + long_ids
    assert list(rejected.input_ids) == full_prompt[-20:] + short_ids

    # 2) still too long: every response of the pair is cut to max_length - max_prompt_length (EOS lost)
    chosen, rejected = encode_group(tok, prompt, [long_resp, short_resp], max_length=36, max_prompt_length=20)
    assert list(chosen.input_ids) == full_prompt[-20:] + long_ids[:16]
    assert chosen.input_ids[-1] != tok.eos_token_id
    assert list(rejected.input_ids) == full_prompt[-20:] + short_ids  # shorter than 16: unchanged
    # the same rule on sampled ids (scored as they are, no EOS added)
    sampled = [long_ids[:-1], short_ids]  # a "length" response (no EOS) and a "stop" one
    chosen, rejected = encode_group(tok, prompt, [long_resp, short_resp], max_length=36, max_prompt_length=20,
                                    token_ids=sampled)
    assert list(chosen.input_ids) == full_prompt[-20:] + long_ids[:16]
    assert list(rejected.input_ids) == full_prompt[-20:] + short_ids

    # 3) fits: nothing is cut
    (enc,) = encode_group(tok, prompt, [short_resp], max_length=1024, max_prompt_length=512)
    assert list(enc.input_ids) == full_prompt + short_ids

    with pytest.raises(ValueError, match="max_prompt_length"):
        encode_group(tok, prompt, [short_resp], max_length=16, max_prompt_length=16)


def test_collate_masks_prompt_and_padding(tok):
    seqs = encode_group(tok, "List five fruits.", ["apple", "apple, banana, cherry"], max_length=1024,
                        max_prompt_length=512)
    batch = collate(seqs, pad_id=0)
    short, long_ = seqs
    assert batch["input_ids"].shape == (2, len(long_.input_ids))
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * (
        len(long_.input_ids) - len(short.input_ids))
    labels = batch["labels"][0].tolist()
    assert labels[: short.prompt_len] == [IGNORE_INDEX] * short.prompt_len
    assert labels[short.prompt_len : len(short.input_ids)] == list(short.input_ids[short.prompt_len :])
    assert set(labels[len(short.input_ids) :]) == {IGNORE_INDEX}


def _hand_logp(model, enc):
    """log p(response | prompt) by a loop over tokens of one unpadded forward."""
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    total = 0.0
    for t in range(enc.prompt_len, len(enc.input_ids)):
        total += torch.log_softmax(logits[t - 1].double(), dim=-1)[enc.input_ids[t]].item()
    return total


def test_sequence_logps_equals_hand_loop_and_ignores_padding(tok, model):
    seqs = []
    for row in PAIRS:
        seqs += encode_group(tok, row["prompt"], [row["chosen"], row["rejected"]], max_length=1024,
                             max_prompt_length=512)
    with torch.no_grad():
        sums, counts = sequence_logps(model, collate(seqs, pad_id=tok.pad_token_id))
    # float32 sums of n token log-probs (|S| = 25..221 here) against float64 log-softmaxes of the
    # same logits: f32_sum_tol (8 eps |S| sqrt(n), 1.2e-3 at the largest sum)
    tol = f32_sum_tol(sums, counts)
    for i, enc in enumerate(seqs):
        assert counts[i].item() == enc.num_response_tokens
        assert sums[i].item() == pytest.approx(_hand_logp(model, enc), rel=0, abs=tol[i].item())
    # far below what a padding or masking bug moves a sum: one token's log-prob, ~log 512 = 6.2 here
    assert tol.max() < 0.01

    # the same sequence alone, or with another pad id, or beside a much longer one: same sums
    with torch.no_grad():
        alone = [sequence_logps(model, collate([s], pad_id=0))[0].item() for s in seqs]
        other_pad = sequence_logps(model, collate(seqs, pad_id=7))[0]
        longer = encode_group(tok, "Write a short poem about the sea. " * 5, ["The waves roll in. " * 8],
                              max_length=1024, max_prompt_length=512)
        padded_more = sequence_logps(model, collate(seqs + longer, pad_id=tok.pad_token_id))[0][: len(seqs)]
    # other batch shapes may run other float32 kernels: the same per-sum tolerance
    assert ((sums - torch.tensor(alone)).abs() <= tol).all()
    assert ((sums - other_pad).abs() <= tol).all()
    assert ((sums - padded_more).abs() <= tol).all()

    class NoLogitsToKeep(torch.nn.Module):  # a model whose forward has no logits_to_keep: full logits
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, use_cache):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    with torch.no_grad():
        full = sequence_logps(NoLogitsToKeep(model), collate(seqs, pad_id=tok.pad_token_id))[0]
    assert ((sums - full).abs() <= tol).all()  # logits of every position: other matmul shapes


def test_logps_step_writes_cache_and_scores_shared_model_once(tmp_path, tiny_model_dir, tiny_model_dir_b,
                                                              monkeypatch, model, tok):
    import rspo.models
    from rspo.cli import main

    pairs = tmp_path / "pairs.jsonl"
    write_table(pairs, PAIRS, "pairs")
    loads = []
    real_load = rspo.models.load_causal_lm
    monkeypatch.setattr(rspo.models, "load_causal_lm", lambda ref, **kw: loads.append(ref) or real_load(ref, **kw))

    # iteration 1: pi_0 = mu -> loaded and scored once, values reused
    out1 = tmp_path / "same.jsonl"
    params = '{"logps_batch_size": 2}'
    assert main(["logps", "--pairs", str(pairs), "--last-model", str(tiny_model_dir), "--ref-model",
                 str(tiny_model_dir) + "/", "--out", str(out1), "--params", params]) == 0
    assert len(loads) == 1
    rows = read_table(out1, "pairs_logps")
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2"]
    for row, src in zip(rows, PAIRS):
        for key, value in src.items():
            assert row[key] == value  # every pairs field is kept
        assert row["last_logp_chosen"] == row["ref_logp_chosen"]
        chosen, rejected = encode_group(tok, src["prompt"], [src["chosen"], src["rejected"]], max_length=1024,
                                        max_prompt_length=512)
        for enc, key in ((chosen, "last_logp_chosen"), (rejected, "last_logp_rejected")):
            # float32 sum of the batched step against the float64 hand loop (see the test above)
            assert row[key] == pytest.approx(_hand_logp(model, enc), rel=0,
                                             abs=f32_sum_tol(row[key], enc.num_response_tokens))
        assert (row["chosen_tokens"], row["rejected_tokens"]) == (chosen.num_response_tokens,
                                                                  rejected.num_response_tokens)

    # pi_t != mu: two loads; the mu columns are the other model's
    loads.clear()
    out2 = tmp_path / "two.jsonl"
    assert main(["logps", "--pairs", str(pairs), "--last-model", str(tiny_model_dir_b), "--ref-model",
                 str(tiny_model_dir), "--out", str(out2), "--params", params]) == 0
    assert loads == [str(tiny_model_dir_b), str(tiny_model_dir)]
    for r1, r2 in zip(rows, read_table(out2, "pairs_logps")):
        # mu's sums, now scored beside pi_t's: float32 rounding at most (f32_sum_tol); pi_t's differ
        # by whole nats (another random model), far beyond it
        tol = f32_sum_tol(r1["ref_logp_chosen"], r1["chosen_tokens"])
        assert r2["ref_logp_chosen"] == pytest.approx(r1["ref_logp_chosen"], rel=0, abs=tol)
        assert r2["last_logp_chosen"] != pytest.approx(r1["last_logp_chosen"], rel=0, abs=100 * tol)


def test_logps_step_rejects_bad_truncation_params(tmp_path, tiny_model_dir, capsys):
    from rspo.cli import main

    pairs = tmp_path / "pairs.jsonl"
    write_table(pairs, PAIRS, "pairs")
    rc = main(["logps", "--pairs", str(pairs), "--last-model", str(tiny_model_dir), "--ref-model",
               str(tiny_model_dir), "--out", str(tmp_path / "o.jsonl"),
               "--params", '{"max_length": 64, "max_prompt_length": 64}'])
    assert rc == 1
    assert "max_prompt_length" in capsys.readouterr().err


def test_text_responses_split_at_the_prompt_boundary_or_are_encoded_alone():
    from rspo.logps import response_ids_from_text

    class Fixed:  # a tokenizer with canned encodings: P = the prompt text, R = the response text
        def __init__(self, joint):
            self.table = {"P": [1, 2, 3], "PR": joint, "R": [8, 4, 5]}

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": self.table[text]}

    assert response_ids_from_text(Fixed([1, 2, 3, 4, 5]), "P", [1, 2, 3], "R") == [4, 5]  # joint, split
    # a token straddles the boundary (3 + 4 -> 9): the prompt keeps generation's ids, the response is encoded alone
    assert response_ids_from_text(Fixed([1, 2, 9, 5]), "P", [1, 2, 3], "R") == [8, 4, 5]
