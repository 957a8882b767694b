"""``rspo prepare-prompts``: write one prompt set (embedded split, local file or HF dataset)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument(
        "--params", required=True,
        help='PromptSource as JSON, e.g. \'{"embedded": "train1"}\', \'{"path": "p.jsonl", "column": "instruction"}\' '
             "or '{\"dataset\": \"UCLA-AGI/data-mistral-7b-instruct-sppo-iter1\", \"limit\": 100}'; or @file.yaml",
    )
    parser.add_argument("--out", required=True, help="prompts table to write")


def run(args) -> int:
    import logging

    from rspo.artifacts import write_table
    from rspo.config import PromptSource, parse_params
    from rspo.prompts import load_prompts

    source = parse_params(args.params, PromptSource)
    rows = load_prompts(source)
    n = write_table(args.out, rows, "prompts")
    logging.getLogger("rspo.prepare_prompts").info("wrote %d prompts to %s", n, args.out)
    return 0
