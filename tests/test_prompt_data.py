"""Invariants of the embedded prompt set ``rspo/data/prompts.jsonl`` (read as package data)."""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib.resources import files

import pytest

SPLITS = {"train1", "train2", "train3", "eval"}
TRAIN_SPLITS = {"train1", "train2", "train3"}
FIELDS = {"prompt_id", "prompt", "category", "split"}


def normalise(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace: equal keys mean (near-)duplicate prompts."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    resource = files("rspo") / "data" / "prompts.jsonl"
    lines = resource.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_normalise_merges_case_punctuation_and_spacing():
    assert normalise("Why is the  sky blue?") == normalise("why is the sky blue")
    assert normalise("Why is the sky blue?") != normalise("Why is the sea blue?")


def test_size_and_fields(rows):
    assert len(rows) >= 350
    for row in rows:
        assert set(row) == FIELDS, row
        assert all(isinstance(row[k], str) for k in FIELDS), row


def test_ids_unique_and_sequential(rows):
    ids = [row["prompt_id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert ids == [f"rspo-{i:04d}" for i in range(1, len(rows) + 1)]


def test_prompts_nonempty_single_line_and_at_least_three_words(rows):
    for row in rows:
        prompt = row["prompt"]
        assert prompt == prompt.strip() and "\n" not in prompt, row["prompt_id"]
        assert len(prompt.split()) >= 3, row


def test_no_duplicate_or_near_duplicate_prompts(rows):
    counts = Counter(normalise(row["prompt"]) for row in rows)
    duplicates = [text for text, n in counts.items() if n > 1]
    assert duplicates == []


def test_splits_and_sizes(rows):
    sizes = Counter(row["split"] for row in rows)
    assert set(sizes) == SPLITS
    assert sizes["eval"] >= 60
    # the three training splits are balanced to within one prompt per category
    n_categories = len({row["category"] for row in rows})
    train_sizes = [sizes[s] for s in sorted(TRAIN_SPLITS)]
    assert max(train_sizes) - min(train_sizes) <= n_categories


def test_every_category_in_every_split(rows):
    categories = {row["category"] for row in rows}
    assert len(categories) >= 6
    present = {(row["category"], row["split"]) for row in rows}
    missing = sorted((c, s) for c in categories for s in SPLITS if (c, s) not in present)
    assert missing == []


def test_eval_disjoint_from_train(rows):
    eval_texts = {normalise(r["prompt"]) for r in rows if r["split"] == "eval"}
    train_texts = {normalise(r["prompt"]) for r in rows if r["split"] in TRAIN_SPLITS}
    assert eval_texts and train_texts
    assert eval_texts.isdisjoint(train_texts)


def test_not_copied_from_alpaca_eval(rows, alpaca_eval_dir):
    reference = json.loads((alpaca_eval_dir / "eval_set.json").read_text(encoding="utf-8"))
    theirs = {normalise(item["instruction"]) for item in reference}
    assert len(theirs) > 700
    ours = {normalise(row["prompt"]) for row in rows}
    assert ours.isdisjoint(theirs)
