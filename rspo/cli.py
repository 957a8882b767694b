"""``rspo <step>`` / ``python -m rspo <step>``: one subcommand per pipeline step.

Each step lives in ``rspo/commands/<name>.py`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Steps read files and write files (atomically); their hyperparameters come
as one JSON object through ``--params`` (see ``rspo.config``). Modules are imported only when
their step runs, so ``rspo --help`` is fast and never imports torch or vllm.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from rspo import __version__
from rspo.determinism import CPU_ISA_ENV, CPU_ISAS

# name -> (module under rspo.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-models": ("prepare_models", "convert the embedded SmolLM2 GGUF into a plain HF model folder"),
    "prepare-prompts": ("prepare_prompts", "write one prompt set (embedded split, local file or HF dataset)"),
    "generate": ("generate", "sample K responses per prompt (transformers or vllm backend)"),
    "score": ("score", "K x K preference logits per prompt with a judge"),
    "pairs": ("pairs", "estimate win rates and pick chosen/rejected per prompt"),
    "logps": ("logps", "cache log pi_t and log mu of every chosen/rejected response"),
    "train": ("train", "train pi_{t+1} with the SPPO loss plus lambda * R"),
    "eval-outputs": ("eval_outputs", "write alpaca_eval model_outputs.json from generated responses"),
    "annotate": ("annotate", "pairwise judge annotations (alpaca_eval format) against a reference"),
    "metrics": ("metrics", "win rate, LC win rate and length from an annotations file"),
    "self-bleu": ("self_bleu", "Self-BLEU of n samples per instruction"),
    "summarize": ("summarize", "summary tables, plot and paper comparison over all runs"),
    "merge": ("merge", "join the parts of a sharded step (--shard i/N) into its artefact"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rspo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rspo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice). Set it to the cores the step may use: "
        "oversubscribed threads slow CPU generation down by an order of magnitude. Under `accelerate launch` "
        "they are shared by the processes of the machine (LOCAL_WORLD_SIZE)",
    )
    parser.add_argument(
        "--cpu-isa",
        choices=CPU_ISAS,
        default=os.environ.get(CPU_ISA_ENV) or "native",
        help=f"cap the CPU kernels of torch, MKL and oneDNN at this instruction set: avx2 runs the same kernels on "
        f"every x86-64 machine with AVX2, native each machine's fastest (default: ${CPU_ISA_ENV}, which the workflow "
        "sets from the config key cpu_isa, else native; rspo.determinism)",
    )
    sub = parser.add_subparsers(dest="command", metavar="STEP")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(f"rspo.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"rspo.commands.{module}":
                raise
            p.set_defaults(_missing=True)
            continue
        mod.add_arguments(p)
    return parser


def set_threads(n: int) -> None:
    """Limit torch's intra-op threads (and OpenMP/MKL's) to ``n``."""
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from rspo import redact

    redact.install()  # secret values of the environment never reach a log line or an error message
    from rspo.determinism import pin_cpu_isa
    from rspo.errors import RSPOError

    try:
        pin_cpu_isa(args.cpu_isa)  # before anything imports torch: the libraries read it when they load
    except RSPOError as exc:
        print(f"rspo {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if args.threads:
        from rspo.launch import process_threads

        set_threads(process_threads(args.threads))  # shared by the processes of `accelerate launch`
    if getattr(args, "_missing", False):
        print(f"rspo {args.command}: this step is not available in this installation", file=sys.stderr)
        return 2
    from rspo.artifacts import ArtifactError
    from rspo.config import ConfigError

    mod = importlib.import_module(f"rspo.commands.{args._module}")
    try:
        return int(mod.run(args) or 0)
    except (ArtifactError, ConfigError, RSPOError) as exc:
        print(redact.redact(f"rspo {args.command}: error: {exc}"), file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, read-only or unreadable files: one line, no stack trace
        where = f"{exc.filename}: " if exc.filename else ""
        print(redact.redact(f"rspo {args.command}: error: {where}{exc.strerror or exc}"), file=sys.stderr)
        return 1
