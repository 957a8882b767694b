"""``rspo prepare-models``: convert the embedded SmolLM2 GGUF into a plain HF model folder (once)."""

from __future__ import annotations

DEFAULT_OUT = "resources/models/smollm2-135m-instruct"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"output model folder (default: {DEFAULT_OUT}); kept outside git"
    )
    parser.add_argument("--force", action="store_true", help="convert again even if the folder is up to date")


def run(args) -> int:
    from rspo.models import prepare_smollm2

    out = prepare_smollm2(args.out, force=args.force)
    print(out)
    return 0
