"""``rspo generate``: sample K responses per prompt (transformers or vllm backend); ``--shard i/N``
samples one shard of the prompts (:mod:`rspo.sharding`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model folder or hub id (the policy that samples)")
    parser.add_argument("--prompts", required=True, help="prompts table (rspo prepare-prompts)")
    parser.add_argument("--out", required=True, help="responses table to write")
    parser.add_argument("--params", default=None, help="GenerateConfig as JSON, or @file.yaml (default: defaults)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="generate only shard I of N: the prompts of every N-th batch of the whole table's longest-first "
        "order (its responses rows, in prompt order); `rspo merge --kind responses` joins the N parts",
    )


def run(args) -> int:
    import logging

    from rspo.artifacts import ArtifactError, read_table, write_table
    from rspo.config import GenerateConfig, parse_params
    from rspo.generation import check_config, generate
    from rspo.sharding import parse_shard

    cfg = parse_params(args.params, GenerateConfig)
    check_config(cfg)
    shard = parse_shard(args.shard)
    prompts = read_table(args.prompts, "prompts")
    if not prompts:
        raise ArtifactError(f"{args.prompts}: no prompts to generate for")
    if cfg.max_prompt_length is not None:  # truncated per config (the END is kept) and counted
        from rspo.chat import count_over_budget
        from rspo.models import load_tokenizer

        n = count_over_budget(load_tokenizer(args.model), [p["prompt"] for p in prompts], cfg.max_prompt_length)
        if n:
            logging.getLogger("rspo.generate").warning(
                "%d of %d prompts are longer than generation.max_prompt_length = %d tokens: "
                "they keep their last %d tokens", n, len(prompts), cfg.max_prompt_length, cfg.max_prompt_length)
    rows = generate(args.model, prompts, cfg, progress=not args.no_progress, shard=shard)
    n = write_table(args.out, rows, "responses")
    logging.getLogger("rspo.generate").info(
        "wrote %d prompts x %d responses (%s backend%s) to %s",
        n, cfg.sampling.n, cfg.backend, f", shard {shard} of {len(prompts)} prompts" if shard else "", args.out,
    )
    return 0
