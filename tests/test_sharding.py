"""Sharded steps (rspo.sharding): every unit (batch / chunk) holds the same rows for every shard
count, the parts merge into exactly the unsharded rows, and `rspo merge` rejects parts that do not
cover the input exactly once. The workflow's byte-identity (N = 1 against 2 and 3) is
tests/test_workflow_shards.py."""

from __future__ import annotations

import json

import pytest

from rspo.artifacts import read_table, write_table
from rspo.cli import main
from rspo.config import GenerateConfig, SamplingConfig, TrainConfig
from rspo.errors import RSPOError
from rspo.sharding import Shard, longest_first_batches, merge_rows, parse_shard, select, shard_units

# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("text, want", [("2/3", Shard(2, 3)), ("1-of-1", Shard(1, 1)), (" 3 / 3 ", Shard(3, 3)),
                                        (None, None), ("", None)])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize("text, message", [("0/3", "need 1 <= i <= N"), ("4/3", "need 1 <= i <= N"),
                                           ("2", "expected i/N"), ("a/b", "expected i/N"), ("1/0", "need 1")])
def test_parse_shard_rejects_bad_values(text, message):
    with pytest.raises(RSPOError, match=message):
        parse_shard(text)


def test_round_robin_units_cover_every_unit_exactly_once():
    assert shard_units(7, Shard(2, 3)) == [1, 4]
    assert shard_units(7, None) == list(range(7))
    assert shard_units(2, Shard(3, 3)) == []  # more shards than units: an empty part
    for units in range(13):
        for n in range(1, 6):
            got = [u for i in range(1, n + 1) for u in shard_units(units, Shard(i, n))]
            assert sorted(got) == list(range(units)), (units, n)


def test_longest_first_batches_then_shards_keep_every_batch_whole():
    # lengths by index: 0:3 1:5 2:5 3:1 4:4 5:2 6:6 -> longest first, ties in input order
    batches = longest_first_batches([3, 5, 5, 1, 4, 2, 6], 2)
    assert batches == [[6, 1], [2, 4], [0, 5], [3]]
    assert select(batches, Shard(1, 2)) == [[6, 1], [0, 5]]
    assert select(batches, Shard(2, 2)) == [[2, 4], [3]]
    assert select(batches, Shard(3, 3)) == [[0, 5]]


def test_merge_rows_checks_coverage():
    a = ("a.jsonl", [{"prompt_id": "p1"}, {"prompt_id": "p3"}])
    b = ("b.jsonl", [{"prompt_id": "p2"}])
    assert list(merge_rows([a, b], ["p1", "p2", "p3"], "src")) == ["p1", "p3", "p2"]
    from rspo.artifacts import ArtifactError

    with pytest.raises(ArtifactError, match=r"b.jsonl: prompt_id 'p1' also appears in a.jsonl"):
        merge_rows([a, ("b.jsonl", [{"prompt_id": "p1"}])], ["p1", "p2", "p3"], "src")
    with pytest.raises(ArtifactError, match=r"1 prompt\(s\) of src are in no part \('p2'\)"):
        merge_rows([a], ["p1", "p2", "p3"], "src")
    with pytest.raises(ArtifactError, match=r"b.jsonl: prompt_id 'p2' is not in src"):
        merge_rows([a, b], ["p1", "p3"], "src")


# --------------------------------------------------------------------------- steps


@pytest.fixture
def one_thread():
    """One torch thread: the tiny models run an order of magnitude slower with oversubscribed
    threads on a busy 2-core machine (results do not depend on it: the same thread count throughout)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PROMPTS = [
    {"prompt_id": f"q{i}", "prompt": text}
    for i, text in enumerate([
        "What is the capital of France?",
        "Write a short poem about the sea and the waves that roll in every day.",
        "List five fruits.",
        "Explain why the sky is blue, in two sentences for a child.",
        "How do I sort a list in Python?",
        "Give me three tips for staying healthy.",
        "Summarise the plot of a detective story.",
    ])
]


IDS = [p["prompt_id"] for p in PROMPTS]


def gen_cfg(batch_size=2) -> GenerateConfig:
    return GenerateConfig(batch_size=batch_size, dtype="fp32",
                          sampling=SamplingConfig(n=2, temperature=1.0, top_p=0.9, max_new_tokens=5, seed=3))


def test_generation_shards_run_the_same_batches_and_merge_to_the_same_rows(tiny_model_dir, monkeypatch,
                                                                            one_thread):
    """Every shard count runs exactly the batches of the unsharded step (recorded at the model
    call), and the merged rows equal the unsharded rows as JSON text."""
    import rspo.generation as generation
    from rspo.commands.merge import merge

    seen: list[tuple[str, ...]] = []
    real = generation._generate_batch

    def recording(model, tokenizer, encoded, prompt_ids, cfg):
        seen.append(tuple(prompt_ids))
        return real(model, tokenizer, encoded, prompt_ids, cfg)

    monkeypatch.setattr(generation, "_generate_batch", recording)
    whole = generation.generate(str(tiny_model_dir), PROMPTS, gen_cfg(), progress=False)
    batches, seen[:] = list(seen), []
    assert len(batches) == 4 and sorted(len(b) for b in batches) == [1, 2, 2, 2]
    for n in (2, 3, 5):
        parts = []
        for i in range(1, n + 1):
            rows = generation.generate(str(tiny_model_dir), PROMPTS, gen_cfg(), progress=False, shard=Shard(i, n))
            order = [IDS.index(r["prompt_id"]) for r in rows]
            assert order == sorted(order)  # a part keeps the prompts' order
            parts.append((f"part{i}", rows))
        assert sorted(seen) == sorted(batches), n  # the same batches, each run once
        seen[:] = []
        assert sum(not rows for _, rows in parts) == max(0, n - 4)  # 4 batches: shards past the 4th are empty
        merged = merge("responses", PROMPTS, parts, "prompts")
        assert json.dumps(merged) == json.dumps(whole), n


def test_an_empty_generation_shard_loads_nothing(tmp_path):
    """Shard 3/3 of 3 prompts in batches of 2 (2 batches) has no batch: no model is read."""
    write_table(tmp_path / "prompts.jsonl", PROMPTS[:3], "prompts")
    out = tmp_path / "part.jsonl"
    params = json.dumps({"batch_size": 2, "sampling": {"n": 2}})
    assert main(["generate", "--model", str(tmp_path / "no-such-model"), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--out", str(out), "--params", params, "--shard", "3/3", "--no-progress"]) == 0
    assert out.exists() and read_table(out, "responses") == []


def test_a_vllm_shard_sends_only_its_prompts(monkeypatch, tiny_model_dir):
    """The vllm backend gets the shard's prompts (those of its batches of the longest-first order),
    one request each, in prompt order; the rows are those prompts' only."""
    import sys

    from test_generation import _FakeVLLM

    from rspo.chat import encode_prompt
    from rspo.generation import generate
    from rspo.models import load_tokenizer

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    config = GenerateConfig(backend="vllm", batch_size=2, sampling=SamplingConfig(n=2))
    rows = generate(str(tiny_model_dir), PROMPTS, config, shard=Shard(2, 2))
    tok = load_tokenizer(str(tiny_model_dir))
    lengths = [len(encode_prompt(tok, p["prompt"])) for p in PROMPTS]
    mine = sorted(i for batch in longest_first_batches(lengths, 2)[1::2] for i in batch)
    assert len(mine) == 3  # batches 2 and 4 of 4: 2 + 1 prompts
    assert fake.calls["generate"][0][0] == [{"prompt_token_ids": encode_prompt(tok, PROMPTS[i]["prompt"])} for i in mine]
    assert [r["prompt_id"] for r in rows] == [PROMPTS[i]["prompt_id"] for i in mine]
    assert [r["responses"] for r in rows] == [[f"r{k}-0", f"r{k}-1"] for k in range(3)]


PAIRS = [
    {"prompt_id": f"p{i}", "prompt": p["prompt"], "chosen": c, "rejected": r, "chosen_index": 0,
     "rejected_index": 1, "p_chosen": 0.6, "p_rejected": 0.4, "scores": [1.0, -1.0]}
    for i, (p, c, r) in enumerate(zip(PROMPTS, [
        "Paris.", "The waves roll in, the gulls cry out, the tide goes back again.", "apple, banana, cherry",
        "Sunlight scatters off air molecules; blue scatters most.", "sorted(items)", "Sleep, eat, move.",
        "A detective finds the thief.",
    ], ["Lyon", "Sea.", "apple", "Because.", "You cannot sort a list in Python at all.", "No.", "?"]))
]


def test_logps_shards_score_the_same_batches_and_merge_to_the_unsharded_cache(tiny_model_dir, tiny_model_dir_b,
                                                                            monkeypatch, tmp_path, one_thread):
    """pi_t != mu (two models); batches of 3 sequences cut pairs apart, so parts are per sequence."""
    import rspo.logps as logps
    from rspo.commands.logps import cache_logps, part_rows
    from rspo.commands.merge import merge

    seen: list[tuple] = []
    real = logps.sequence_logps

    def recording(model, batch, **kwargs):
        ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
        seen.append(tuple(tuple(t for t, m in zip(r, mr) if m) for r, mr in zip(ids, mask)))
        return real(model, batch, **kwargs)

    monkeypatch.setattr(logps, "sequence_logps", recording)
    cfg = TrainConfig(logps_batch_size=3, max_length=64, max_prompt_length=32)
    last, ref = str(tiny_model_dir_b), str(tiny_model_dir)
    whole = cache_logps(PAIRS, last, ref, cfg)
    batches, seen[:] = sorted(seen), []
    assert len(batches) == 2 * 5  # 14 sequences in batches of 3, per model
    for n in (2, 3):
        parts = [(f"part{i}", part_rows(PAIRS, last, ref, cfg, Shard(i, n))) for i in range(1, n + 1)]
        assert sorted(seen) == batches, n
        seen[:] = []
        merged = merge("pairs_logps", PAIRS, parts, "pairs")
        assert json.dumps(merged) == json.dumps(whole), n
    # through the CLI: a part per shard, then `rspo merge` writes the table the unsharded step writes
    write_table(tmp_path / "pairs.jsonl", PAIRS, "pairs")
    common = ["--pairs", str(tmp_path / "pairs.jsonl"), "--last-model", last, "--ref-model", ref,
              "--params", json.dumps({"logps_batch_size": 3, "max_length": 64, "max_prompt_length": 32})]
    assert main(["logps", *common, "--out", str(tmp_path / "whole.jsonl")]) == 0
    for i in (1, 2):
        assert main(["logps", *common, "--out", str(tmp_path / f"part{i}.jsonl"), "--shard", f"{i}/2"]) == 0
    assert {r["model"] for r in read_table(tmp_path / "part2.jsonl", "pairs_logps_part")} == {"last", "ref"}
    assert main(["merge", "--kind", "pairs_logps", "--source", str(tmp_path / "pairs.jsonl"),
                 "--out", str(tmp_path / "merged.jsonl"), str(tmp_path / "part2.jsonl"),
                 str(tmp_path / "part1.jsonl")]) == 0
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


class ChunkSensitiveJudge:
    """A judge whose logits depend on which prompts share its compare_many call (as a batched
    model's do, through padding): a misplaced chunk boundary changes them."""

    name = "chunky"

    def compare_many(self, prompts, candidate_lists):
        import numpy as np

        context = sum(len(p) for p in prompts) / 1000.0
        return [np.subtract.outer(np.arange(len(c), dtype=float), np.arange(len(c), dtype=float)) - context
                for c in candidate_lists]


def test_score_shards_keep_whole_chunks(monkeypatch):
    from rspo.commands import score
    from rspo.commands.merge import merge

    responses = [{"prompt_id": f"r{i}", "prompt": "x" * (i + 1), "responses": ["a", "b"]} for i in range(11)]
    judge = ChunkSensitiveJudge()
    whole = score.score_rows(responses, judge, chunk=3)
    for n in (2, 3, 4, 5):
        parts = [(f"part{i}", score.score_rows(responses, judge, chunk=3, shard=Shard(i, n))) for i in range(1, n + 1)]
        assert json.dumps(merge("preferences", responses, parts, "responses")) == json.dumps(whole), n
    # the judge really is chunk-sensitive: contiguous halves (other chunks) give other logits
    halves = score.score_rows(responses[:6], judge, chunk=4) + score.score_rows(responses[6:], judge, chunk=4)
    assert json.dumps(halves) != json.dumps(whole)


# --------------------------------------------------------------------------- rspo merge


def _responses(rows):
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "responses": ["a"], "num_tokens": [1],
             "finish_reasons": ["stop"], "generator": "g", "sampling": {}} for r in rows]


@pytest.fixture
def parts(tmp_path):
    write_table(tmp_path / "prompts.jsonl", PROMPTS[:4], "prompts")
    rows = _responses(PROMPTS[:4])
    write_table(tmp_path / "a.jsonl", [rows[3], rows[0]], "responses")
    write_table(tmp_path / "b.jsonl", [rows[1], rows[2]], "responses")
    write_table(tmp_path / "empty.jsonl", [], "responses")
    return tmp_path


def merge_cli(d, *parts):
    return main(["merge", "--kind", "responses", "--source", str(d / "prompts.jsonl"), "--out", str(d / "out.jsonl"),
                 *[str(d / p) for p in parts]])


def test_merge_writes_the_source_order(parts):
    assert merge_cli(parts, "b.jsonl", "empty.jsonl", "a.jsonl") == 0
    assert [r["prompt_id"] for r in read_table(parts / "out.jsonl", "responses")] == ["q0", "q1", "q2", "q3"]


@pytest.mark.parametrize("edit, message", [
    (None, r"1 prompt\(s\) of \S+prompts.jsonl are in no part \('q1'\): a shard is missing or stale"),
    ("dup", r"prompt_id 'q0' also appears in \S+a.jsonl"),
    ("foreign", r"prompt_id 'zz' is not in \S+prompts.jsonl"),
    ("stale", r"prompt_id 'q1': the part's prompt differs from \S+prompts.jsonl's"),
])
def test_merge_rejects_parts_that_do_not_cover_the_source_once(parts, capsys, edit, message):
    rows = _responses(PROMPTS[:4])
    second = {None: [rows[2]], "dup": [rows[1], rows[2], rows[0]],
              "foreign": [rows[1], rows[2], {**rows[1], "prompt_id": "zz"}],
              "stale": [{**rows[1], "prompt": "another prompt"}, rows[2]]}[edit]
    write_table(parts / "b.jsonl", second, "responses")
    assert merge_cli(parts, "a.jsonl", "b.jsonl") == 1
    err = capsys.readouterr().err
    assert err.startswith("rspo merge: error: ") and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not (parts / "out.jsonl").exists()


def test_merge_of_logps_parts_needs_every_sequence(tmp_path, capsys):
    write_table(tmp_path / "pairs.jsonl", PAIRS[:2], "pairs")
    seq = [{"prompt_id": p["prompt_id"], "model": m, "response": r, "logp": -1.5, "tokens": 3}
           for p in PAIRS[:2] for m in ("last", "ref") for r in ("chosen", "rejected")]
    write_table(tmp_path / "part.jsonl", seq[:-1], "pairs_logps_part")  # p1's ref rejected is missing
    assert main(["merge", "--kind", "pairs_logps", "--source", str(tmp_path / "pairs.jsonl"),
                 "--out", str(tmp_path / "out.jsonl"), str(tmp_path / "part.jsonl")]) == 1
    assert "prompt_id 'p1': no ref-model log-prob of the rejected response in any part" in capsys.readouterr().err
    write_table(tmp_path / "part.jsonl", seq, "pairs_logps_part")
    assert main(["merge", "--kind", "pairs_logps", "--source", str(tmp_path / "pairs.jsonl"),
                 "--out", str(tmp_path / "out.jsonl"), str(tmp_path / "part.jsonl")]) == 0
    out = read_table(tmp_path / "out.jsonl", "pairs_logps")
    assert [(r["last_logp_chosen"], r["ref_logp_rejected"], r["chosen_tokens"]) for r in out] == [(-1.5, -1.5, 3)] * 2
