"""``rspo score``: the K x K preference logits of every prompt's responses, with any judge.

Reads a ``responses`` table, asks the judge of ``--params`` (a ``JudgeConfig``: ``name`` embedded |
pairrm | reward_model | llm, ``model``, ``batch_size``, ``beta``, ``cache_dir``, ``options``) for
each prompt's matrix and writes the ``preferences`` table: one row per prompt with ``prompt_id``,
``judge`` (the judge's name), ``logits`` (K x K, ``logits[i][j]`` = logit that response i beats j,
diagonal 0) and ``K``. A NaN/inf entry is written as null (strict JSON) and counted in the log;
``rspo pairs`` drops and counts that prompt. Prompts are judged in chunks (batched inside each
chunk); with ``cache_dir`` set, judgements already made cost nothing. ``--shard i/N`` judges every
N-th chunk only (:mod:`rspo.sharding`); ``rspo merge --kind preferences`` joins the parts.

What the judge reads as the prompt is ``JudgeConfig.prompt_form``: ``raw``, the instruction as it is;
or ``chat``, the policy's chat-formatted prompt string (:func:`rspo.chat.format_prompt`, e.g.
``<s>[INST] {instruction} [/INST]`` for Mistral-7B-Instruct), which is what the authors' ``rank.py``
gives PairRM. The chat template is that of ``--chat-model``, by default the model that generated the
responses (the table's ``generator``).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK_PROMPTS = 16  # prompts per compare_many call (one progress-bar step each)
PROMPT_FORMS = ("raw", "chat")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", required=True, type=Path, help="responses table (K per prompt)")
    parser.add_argument("--out", required=True, type=Path, help="preferences table to write")
    parser.add_argument("--params", default=None, help="JudgeConfig as JSON, or @file.yaml (default: embedded)")
    parser.add_argument("--chat-model", default=None,
                        help="model whose chat template renders the prompt for prompt_form: chat "
                             "(default: the responses' generator)")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help=f"score only shard I of N: every N-th chunk of {CHUNK_PROMPTS} prompts (its preferences rows); "
        "`rspo merge --kind preferences` joins the N parts",
    )


def judge_prompts(responses: list[dict], prompt_form: str, chat_model: str | None = None,
                  source: str = "responses") -> list[str]:
    """The prompt string the judge reads for each row: the raw instruction, or (``chat``) the chat
    template of ``chat_model`` (default: the rows' ``generator``) rendered around it."""
    from rspo.config import ConfigError

    if prompt_form not in PROMPT_FORMS:
        raise ConfigError(f"judge.prompt_form: unknown {prompt_form!r}; allowed: {', '.join(PROMPT_FORMS)}")
    if prompt_form == "raw":
        return [r["prompt"] for r in responses]
    from rspo.artifacts import ArtifactError
    from rspo.chat import format_prompt
    from rspo.models import load_tokenizer

    if chat_model is None:
        generators = sorted({r["generator"] for r in responses})
        if len(generators) != 1:
            raise ArtifactError(f"{source}: judge.prompt_form=chat needs one model's chat template, but the rows "
                                f"come from {len(generators)} generators {generators[:3]}; pass --chat-model")
        chat_model = generators[0]
    tokenizer = load_tokenizer(chat_model)
    return [format_prompt(tokenizer, r["prompt"]) for r in responses]


def score_rows(responses: list[dict], judge, chunk: int = CHUNK_PROMPTS, prompts: list[str] | None = None,
               shard=None) -> list[dict]:
    """The ``preferences`` rows of ``responses`` under ``judge``; ``prompts`` = what the judge reads as each
    row's prompt (default: the raw ``prompt``, see :func:`judge_prompts`); with ``shard`` (rspo.sharding)
    only those of its chunks (every N-th chunk of ``chunk`` prompts of the whole table, in input order)."""
    import numpy as np
    from tqdm import tqdm

    from rspo.sharding import chunks, select

    prompts = [r["prompt"] for r in responses] if prompts is None else prompts
    selected = select(chunks(len(responses), chunk), shard)
    rows: list[dict] = []
    bad: list[str] = []
    with tqdm(total=sum(map(len, selected)), desc=f"score ({judge.name})", unit="prompt") as bar:
        for indices in selected:
            part = [responses[i] for i in indices]
            mats = judge.compare_many([prompts[i] for i in indices], [r["responses"] for r in part])
            for r, m in zip(part, mats):
                logits = [[v if math.isfinite(v) else None for v in row] for row in np.asarray(m, dtype=float).tolist()]
                if any(v is None for i, row in enumerate(logits) for j, v in enumerate(row) if i != j):
                    bad.append(r["prompt_id"])
                rows.append({"prompt_id": r["prompt_id"], "judge": judge.name, "logits": logits, "K": len(m)})
            bar.update(len(part))
    if bad:
        log.warning("%d of %d prompts got NaN/inf preferences from %s (written as null; rspo pairs drops them), "
                    "e.g. %r", len(bad), len(responses), judge.name, bad[0])
    return rows


def run(args: argparse.Namespace) -> int:
    from rspo.artifacts import ArtifactError, read_table, write_table
    from rspo.config import JudgeConfig, parse_params
    from rspo.preference import get_judge
    from rspo.sharding import num_chunks, parse_shard, shard_units

    cfg = parse_params(args.params, JudgeConfig)
    shard = parse_shard(args.shard)
    responses = read_table(args.responses, "responses")
    seen: set[str] = set()
    for row in responses:
        if row["prompt_id"] in seen:
            raise ArtifactError(f"{args.responses}: prompt_id {row['prompt_id']!r} appears twice")
        seen.add(row["prompt_id"])
        if not all(isinstance(c, str) for c in row["responses"]):
            raise ArtifactError(f"{args.responses}: prompt_id {row['prompt_id']!r}: responses must be strings")
    prompts = judge_prompts(responses, cfg.prompt_form, args.chat_model, source=str(args.responses))
    if shard is not None and not shard_units(num_chunks(len(responses), CHUNK_PROMPTS), shard):
        write_table(args.out, [], "preferences")
        log.info("shard %s has no chunk of the %d prompts: wrote an empty part %s", shard, len(responses), args.out)
        return 0
    judge = get_judge(cfg)
    rows = score_rows(responses, judge, max(1, CHUNK_PROMPTS), prompts, shard)
    n = write_table(args.out, rows, "preferences")
    log.info("wrote %d preference matrices (judge %s%s) to %s", n, judge.name, f", shard {shard}" if shard else "",
             args.out)
    return 0
