"""Train pi_{t+1} with the RSPO loss on cached log-probs: one model and one optimizer in memory.

The authors' ``SPPORegTrainer`` holds three models (pi_theta, a frozen pi_t and a frozen mu) and
runs all three forwards every step. Here ``rspo logps`` has already stored log pi_t and log mu of
every chosen/rejected response (they never change during an iteration), so a step is one forward
and backward of pi_theta:

    policy_logps = sequence_logps(pi_theta, [chosen..., rejected...])        (B, 2) sums
    loss = rspo_loss(policy_logps, cached last_logps, cached ref_logps, win_probs, eta, lambdas)

Everything else follows the authors' recipe (TRL-0.9.6 ``DPOTrainer`` defaults): RMSProp (AdamW
available), linear schedule with warm-up ratio (constant / cosine too), gradient accumulation,
max_length / max_prompt_length truncation (:mod:`rspo.logps`), dropout disabled, optional gradient
checkpointing, bf16 mixed precision on GPU and fp32 on CPU. It runs on ``accelerate``, so
``accelerate launch`` with DDP, DeepSpeed ZeRO-3 or FSDP spreads it over several GPUs (data order,
sharding and checkpoints go through the ``Accelerator``; :mod:`rspo.launch` builds the command).
Two-process DDP runs on CPU (gloo) are tested against one process; FSDP and DeepSpeed need GPUs.

Several processes: DDP averages the gradients of the ranks, so with the same global batch and data
order a run of N processes computes the gradient of one process that accumulates N times as many
micro-batches (up to the order of the float32 sums). Model, optimizer and scheduler state, the
``state.json``, the log, the manifest and the final model are written by the main process; each
process writes and reads its own RNG state; every process loads the checkpoint.

Data order: each epoch is a permutation seeded by ``(seed, epoch)``; an optimizer step takes the
next ``per_device_batch_size * gradient_accumulation_steps * num_processes`` pairs (the last step of
an epoch wraps around to the epoch's first pairs), so every step has the same global batch.

Resumable: every ``checkpoint_every`` optimizer steps the model, optimizer, scheduler, RNG states,
step, the epoch's data order and the log so far go to ``DIR.partial/checkpoint`` (written beside
and renamed into place). A restarted run with the same inputs resumes there and ends with the same
weights as an uninterrupted one. A non-finite loss or gradient norm raises :class:`RSPOError`
naming the step and keeps the last good checkpoint. The final model is written with
``save_pretrained`` (+ tokenizer + ``manifest.json``) to a temporary folder and renamed onto DIR, its
floating-point weights in ``save_dtype`` (fp32, or bf16 as the authors' DeepSpeed 16-bit save).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rspo.config import ConfigError, TrainConfig
from rspo.errors import RSPOError
from rspo.logps import Encoded

if TYPE_CHECKING:
    import torch

    from rspo.losses import LossOutput

log = logging.getLogger(__name__)

OPTIMIZERS = ("rmsprop", "adamw")
SCHEDULERS = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}
SAVE_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # save_dtype -> torch dtype name


class NonFiniteLossError(RSPOError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- config


def check_config(cfg: TrainConfig) -> None:
    """Reject values the trainer cannot run with (ConfigError names the key)."""
    from rspo.logps import resolve_precision

    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"TrainConfig.optimizer: unknown {cfg.optimizer!r}; allowed: {list(OPTIMIZERS)}")
    if cfg.lr_scheduler not in SCHEDULERS:
        raise ConfigError(f"TrainConfig.lr_scheduler: unknown {cfg.lr_scheduler!r}; allowed: {list(SCHEDULERS)}")
    for key in ("per_device_batch_size", "gradient_accumulation_steps", "logps_batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"TrainConfig.{key}: must be >= 1, got {getattr(cfg, key)}")
    if not 0 < cfg.max_prompt_length < cfg.max_length:
        raise ConfigError(
            f"TrainConfig: need 0 < max_prompt_length < max_length, got {cfg.max_prompt_length} and {cfg.max_length}"
        )
    if not (cfg.num_epochs > 0 and math.isfinite(cfg.num_epochs)):
        raise ConfigError(f"TrainConfig.num_epochs: must be > 0, got {cfg.num_epochs}")
    if not 0 <= cfg.warmup_ratio <= 1:
        raise ConfigError(f"TrainConfig.warmup_ratio: must be in [0, 1], got {cfg.warmup_ratio}")
    if not (cfg.learning_rate > 0 and cfg.eta > 0):
        raise ConfigError("TrainConfig.learning_rate and TrainConfig.eta must be > 0")
    if cfg.logps_chunk_size < 0:
        raise ConfigError(f"TrainConfig.logps_chunk_size: must be >= 0 (0 = unchunked), got {cfg.logps_chunk_size}")
    if cfg.checkpoint_every < 0:
        raise ConfigError(f"TrainConfig.checkpoint_every: must be >= 0, got {cfg.checkpoint_every}")
    if cfg.max_grad_norm is not None and cfg.max_grad_norm <= 0:
        raise ConfigError(f"TrainConfig.max_grad_norm: must be > 0 or null, got {cfg.max_grad_norm}")
    if cfg.save_dtype not in SAVE_DTYPES:
        raise ConfigError(f"TrainConfig.save_dtype: unknown {cfg.save_dtype!r}; allowed: {list(SAVE_DTYPES)}")
    if cfg.num_processes < 1:
        raise ConfigError(f"TrainConfig.num_processes: must be >= 1, got {cfg.num_processes}")
    resolve_precision(cfg.precision)


def resolve_lambdas(cfg: TrainConfig, custom: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """``cfg.regularizer`` (preset, custom name or mapping) -> {term: lambda}; ConfigError if invalid."""
    from rspo.losses import resolve_regularizer

    try:
        return resolve_regularizer(cfg.regularizer, custom)
    except ValueError as exc:
        raise ConfigError(f"TrainConfig.regularizer: {exc}") from None


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PairExample:
    """One training pair: tokens, estimated win rates and cached log-probs (column order chosen, rejected)."""

    prompt_id: str
    chosen: Encoded
    rejected: Encoded
    win_probs: tuple[float, float]
    last_logps: tuple[float, float]  # log pi_t (sums)
    ref_logps: tuple[float, float]  # log mu (sums)
    ref_samples: tuple[Encoded, ...] = ()  # mu's samples for the same prompt (forward_kl only)


def _check_rows(rows: Sequence[dict], source: str) -> None:
    fields = ("p_chosen", "p_rejected", "last_logp_chosen", "last_logp_rejected", "ref_logp_chosen", "ref_logp_rejected")
    seen: set[str] = set()
    for row in rows:
        pid = row["prompt_id"]
        if pid in seen:
            from rspo.artifacts import ArtifactError

            raise ArtifactError(f"{source}: prompt_id {pid!r} appears twice")
        seen.add(pid)
        bad = [f for f in fields if not math.isfinite(row[f])]
        if bad or not (0 <= row["p_chosen"] <= 1 and 0 <= row["p_rejected"] <= 1):
            from rspo.artifacts import ArtifactError

            raise ArtifactError(f"{source}: prompt_id {pid!r}: non-finite or out-of-range value(s) {bad or 'p_*'}")


RefSample = tuple[str, Sequence[int] | None]  # (text, sampled token ids or None)


def build_examples(
    tokenizer,
    rows: Sequence[dict],
    cfg: TrainConfig,
    ref_samples: Mapping[str, Sequence[str | RefSample]] | None = None,
    source: str = "pairs_logps",
) -> list[PairExample]:
    """``pairs_logps`` rows -> :class:`PairExample`; ``ref_samples`` maps prompt_id -> mu's responses
    (texts, or ``(text, sampled ids)``). Sampled ids are scored as they are (:func:`rspo.logps.encode_group`)."""
    from rspo.artifacts import ArtifactError
    from rspo.logps import encode_group, pair_token_ids

    _check_rows(rows, source)
    out = []
    for row in rows:
        kw = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
        chosen, rejected = encode_group(tokenizer, row["prompt"], [row["chosen"], row["rejected"]],
                                        token_ids=pair_token_ids(row), **kw)
        samples: tuple[Encoded, ...] = ()
        if ref_samples is not None:
            texts = ref_samples.get(row["prompt_id"])
            if not texts:
                raise ArtifactError(f"no reference sample (mu's responses) for prompt_id {row['prompt_id']!r} of {source}")
            items = [(t, None) if isinstance(t, str) else t for t in texts]
            # each sample is truncated on its own (a group of one), like a pair
            samples = tuple(encode_group(tokenizer, row["prompt"], [text], token_ids=[ids], **kw)[0]
                            for text, ids in items)
        out.append(
            PairExample(
                prompt_id=row["prompt_id"],
                chosen=chosen,
                rejected=rejected,
                win_probs=(float(row["p_chosen"]), float(row["p_rejected"])),
                last_logps=(float(row["last_logp_chosen"]), float(row["last_logp_rejected"])),
                ref_logps=(float(row["ref_logp_chosen"]), float(row["ref_logp_rejected"])),
                ref_samples=samples,
            )
        )
    return out


def collate_pairs(examples: Sequence[PairExample], pad_id: int, sample_index: int = 0) -> dict[str, torch.Tensor]:
    """One forward batch: rows ``[chosen_1..B, rejected_1..B, (mu sample_1..B)]`` plus the (B, 2) tensors.

    ``sample_index`` picks which of mu's samples each pair uses (modulo their number).
    """
    import torch

    from rspo.logps import collate

    seqs = [e.chosen for e in examples] + [e.rejected for e in examples]
    if any(e.ref_samples for e in examples):
        seqs += [e.ref_samples[sample_index % len(e.ref_samples)] for e in examples]
    batch = collate(seqs, pad_id)
    batch["win_probs"] = torch.tensor([e.win_probs for e in examples], dtype=torch.float32)
    batch["last_logps"] = torch.tensor([e.last_logps for e in examples], dtype=torch.float32)
    batch["ref_logps"] = torch.tensor([e.ref_logps for e in examples], dtype=torch.float32)
    return batch


def compute_loss(model, batch: Mapping[str, torch.Tensor], *, eta: float, lambdas: Mapping[str, float],
                 is_clip: float = 10.0, chunk_size: int = 0) -> LossOutput:
    """pi_theta's log-probs of a :func:`collate_pairs` batch (one forward) -> :func:`rspo.losses.rspo_loss`.

    ``ref_sample_nll`` (forward_kl) is the per-sequence token-MEAN NLL of mu's sample under pi_theta.
    ``chunk_size``: log-probs in chunks of that many tokens (:func:`rspo.logps.sequence_logps`).
    """
    import torch

    from rspo.logps import sequence_logps
    from rspo.losses import rspo_loss

    sums, counts = sequence_logps(model, batch, chunk_size=chunk_size)
    b = batch["win_probs"].shape[0]
    policy = torch.stack([sums[:b], sums[b : 2 * b]], dim=1)
    nll = -(sums[2 * b :] / counts[2 * b :]) if sums.shape[0] > 2 * b else None
    return rspo_loss(
        policy,
        batch["last_logps"],
        batch["ref_logps"],
        batch["win_probs"],
        eta=eta,
        regularizer=dict(lambdas),
        ref_sample_nll=nll,
        is_clip=is_clip,
    )


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Plan:
    """How ``n`` pairs become optimizer steps (see the module docstring)."""

    n: int
    per_device_batch_size: int
    grad_accum: int
    num_processes: int
    seed: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def make(cls, n: int, cfg: TrainConfig, num_processes: int = 1) -> Plan:
        if n < 1:
            raise RSPOError("no training pairs")
        global_batch = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * num_processes
        spe = math.ceil(n / global_batch)
        total = max(1, math.ceil(cfg.num_epochs * spe - 1e-9))
        return cls(n, cfg.per_device_batch_size, cfg.gradient_accumulation_steps, num_processes, cfg.seed, spe,
                   total, math.ceil(cfg.warmup_ratio * total))

    @property
    def global_batch(self) -> int:
        return self.per_device_batch_size * self.grad_accum * self.num_processes

    def epoch_order(self, epoch: int) -> list[int]:
        """The seeded permutation of the pairs for ``epoch`` (independent of any global RNG)."""
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def micro_batches(self, step: int, rank: int = 0) -> tuple[int, list[list[int]]]:
        """(epoch, this process's ``grad_accum`` lists of pair indices) of 0-based optimizer ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        need = self.steps_per_epoch * self.global_batch
        padded = (order * math.ceil(need / self.n))[:need]  # the last step wraps around
        chunk = padded[k * self.global_batch : (k + 1) * self.global_batch]
        bs, world = self.per_device_batch_size, self.num_processes
        return epoch, [chunk[(m * world + rank) * bs : (m * world + rank + 1) * bs] for m in range(self.grad_accum)]


# --------------------------------------------------------------------------- model and optimizer


def disable_dropout(model) -> None:
    """Dropout off, as TRL's ``disable_dropout=True``: pi_theta must equal pi_t where the cache says so."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def make_optimizer(model, cfg: TrainConfig):
    """RMSProp (the paper) or AdamW with torch defaults; weight decay on matrices only (not norms/biases)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.learning_rate)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def make_scheduler(optimizer, cfg: TrainConfig, plan: Plan):
    from transformers import get_scheduler

    return get_scheduler(SCHEDULERS[cfg.lr_scheduler], optimizer, num_warmup_steps=plan.warmup_steps,
                         num_training_steps=plan.total_steps)


# --------------------------------------------------------------------------- processes


def check_processes(accelerator, cfg: TrainConfig) -> None:
    """The run has the processes and the parallelism that its config and its launcher asked for."""
    n = accelerator.num_processes
    if n != cfg.num_processes:
        hint = ""
        if n == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            hint = (" (the launcher started several processes but accelerate did not join them: on CPU "
                    "set ACCELERATE_USE_CPU=true, as the workflow does for a train rule without GPUs)")
        raise ConfigError(f"TrainConfig.num_processes = {cfg.num_processes} but this run has {n} process(es){hint}; "
                          "start it with `accelerate launch --num_processes N` or set num_processes to match")
    kind = accelerator.distributed_type.name
    for flag, wanted in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if os.environ.get(flag, "false").lower() == "true" and kind != wanted:
            raise RSPOError(f"the accelerate config asks for {wanted}, but accelerate runs {kind} here: {wanted} "
                            "needs GPUs (accelerate runs several CPU processes as plain DDP); on CPU use "
                            "config/accelerate/ddp.yaml")


def configure_deepspeed(ds_config: dict, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed config's values that ``cfg`` owns (in place): the micro-batch size and the
    gradient clipping, ``train.max_grad_norm`` (DeepSpeed clips inside its engine, where accelerate's
    ``clip_grad_norm_`` does nothing; 0 = no clipping). Left ``auto``, accelerate would clip at 1.0
    whatever the config says. A value set in the accelerate config file must agree."""
    wanted = {"train_micro_batch_size_per_gpu": cfg.per_device_batch_size,
              "gradient_clipping": float(cfg.max_grad_norm or 0.0)}
    keys = {"train_micro_batch_size_per_gpu": "per_device_batch_size", "gradient_clipping": "max_grad_norm"}
    for key, value in wanted.items():
        given = ds_config.get(key, "auto")
        if given in ("auto", None):
            ds_config[key] = value
        elif float(given) != value:
            raise ConfigError(f"the DeepSpeed config sets {key} = {given} but train.{keys[key]} gives {value}: "
                              f"remove {key} from the accelerate config (rspo sets it)")


# --------------------------------------------------------------------------- checkpoints


def partial_dir(out_dir: str | Path) -> Path:
    """Where the resumable checkpoint of a run writing ``out_dir`` lives: ``out_dir.partial`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` onto ``dest`` (a folder), keeping the old one until the new one is in place."""
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)


class Checkpoints:
    """The one resumable checkpoint of a run under ``DIR.partial/checkpoint`` (+ a live JSONL log).

    ``accelerator.save_state`` writes model, optimizer, registered scheduler and RNG states;
    ``state.json`` adds the step, the epoch's data order, the log so far and a fingerprint of the
    run (resolved config, inputs, number of processes): a checkpoint of another run is never resumed.
    """

    def __init__(self, accelerator, out_dir: Path, fingerprint: str):
        self.accelerator, self.dir, self.fingerprint = accelerator, partial_dir(out_dir), fingerprint
        self.live_log = self.dir / "train_log.jsonl"

    def find(self) -> Path | None:
        for name in ("checkpoint", "checkpoint.old"):  # .old survives a kill between the two renames
            if (self.dir / name / "state.json").exists():
                return self.dir / name
        return None

    def restore(self, plan: Plan) -> tuple[int, list[dict]]:
        """Load the checkpoint of this run if there is one: (steps done, log records); else (0, [])."""
        acc, ckpt, start, records = self.accelerator, self.find(), 0, []
        if ckpt is not None:
            state = json.loads((ckpt / "state.json").read_text())
            if state.get("fingerprint") != self.fingerprint:
                log.warning("%s holds a checkpoint of another run (config or inputs differ): starting afresh", self.dir)
                acc.wait_for_everyone()
                if acc.is_main_process:
                    shutil.rmtree(self.dir)
            else:
                if state["epoch_order"] != plan.epoch_order(state["step"] // plan.steps_per_epoch):
                    raise RSPOError(f"{ckpt}: the stored data order differs from this run's (another torch version?)")
                acc.load_state(str(ckpt))
                start, records = state["step"], state["log"]
                log.info("resuming from %s at optimizer step %d of %d", ckpt, start, plan.total_steps)
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.live_log.write_text("".join(json.dumps(r) + "\n" for r in records))
        return start, records

    def append_log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.live_log, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def save(self, step: int, epoch_order: list[int], records: list[dict]) -> None:
        """Write the state into ``checkpoint.tmp`` (all processes), then rename it onto ``checkpoint``."""
        from rspo.artifacts import apply_default_modes

        acc, tmp = self.accelerator, self.dir / "checkpoint.tmp"
        acc.wait_for_everyone()
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": step, "fingerprint": self.fingerprint, "epoch_order": epoch_order, "log": records}
            (tmp / "state.json").write_text(json.dumps(state))
            apply_default_modes(tmp)
            _replace_dir(tmp, self.dir / "checkpoint")
        acc.wait_for_everyone()

    def describe_last(self) -> str:
        ckpt = self.find()
        if ckpt is None:
            return "no checkpoint was written yet"
        step = json.loads((ckpt / "state.json").read_text())["step"]
        return f"the last good checkpoint (step {step}) is kept in {ckpt}"

    def remove(self) -> None:
        if self.accelerator.is_main_process:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- inputs and outputs


def load_ref_samples(path: str | Path | None, rows: Sequence[dict], pairs: Path) -> dict[str, list[RefSample]]:
    """prompt_id -> mu's responses ``(text, sampled ids or None)`` from a ``responses`` table; every
    pair's prompt must be there."""
    from rspo.artifacts import ArtifactError, read_table

    if path is None:
        raise RSPOError("the forward_kl regularizer needs --ref-samples (a responses table of mu's samples)")
    by_id: dict[str, list[RefSample]] = {}
    for r in read_table(path, "responses"):
        if not r["responses"]:
            raise ArtifactError(f"{path}: prompt_id {r['prompt_id']!r} has no responses")
        ids = r.get("token_ids") or [None] * len(r["responses"])
        if len(ids) != len(r["responses"]):
            raise ArtifactError(f"{path}: prompt_id {r['prompt_id']!r}: {len(ids)} token_ids for "
                                f"{len(r['responses'])} responses")
        by_id[r["prompt_id"]] = list(zip(r["responses"], ids))
    missing = [r["prompt_id"] for r in rows if r["prompt_id"] not in by_id]
    if missing:
        raise ArtifactError(f"{path}: no samples of mu for {len(missing)} prompt_id(s) of {pairs}, e.g. {missing[0]!r}")
    return by_id


def cast_state_dict(state_dict: dict | None, save_dtype: str) -> dict | None:
    """Floating-point tensors in ``save_dtype`` (round to nearest); other tensors as they are. Tensors
    that share memory (tied embeddings) stay shared, so ``save_pretrained`` still writes them once."""
    import torch

    if state_dict is None:  # not the main process under some sharded setups
        return None
    dtype = getattr(torch, SAVE_DTYPES[save_dtype])
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for k, v in state_dict.items():
        if not torch.is_floating_point(v):
            out[k] = v
            continue
        same = (v.data_ptr(), tuple(v.shape), v.stride(), v.dtype)
        if same not in cast:
            cast[same] = v.to(dtype)
        out[k] = cast[same]
    return out


def set_config_dtype(config_json: Path, save_dtype: str) -> None:
    """Write the saved weights' dtype into ``config.json`` (``save_pretrained`` writes the in-memory model's)."""
    if not config_json.exists():
        return
    config = json.loads(config_json.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = SAVE_DTYPES[save_dtype]
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_model(accelerator, net, tokenizer, out_dir: Path, meta: dict, save_dtype: str = "fp32") -> None:
    """``save_pretrained`` (gathered under ZeRO-3/FSDP) of the weights in ``save_dtype`` + tokenizer +
    ``manifest.json`` into a temporary folder beside ``out_dir``, renamed onto it."""
    from rspo.artifacts import apply_default_modes, write_json

    tmp = out_dir.with_name(f".{out_dir.name}.saving")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    state_dict = cast_state_dict(accelerator.get_state_dict(net), save_dtype)
    accelerator.unwrap_model(net).save_pretrained(
        tmp, state_dict=state_dict, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    accelerator.wait_for_everyone()  # every process creates ``tmp``: none may do so after the rename below
    if accelerator.is_main_process:
        set_config_dtype(tmp / "config.json", save_dtype)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "manifest.json", meta)
        apply_default_modes(tmp)  # save_pretrained writes model.safetensors as 0600 whatever the umask
        _replace_dir(tmp, out_dir)
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    *,
    pairs: str | Path,
    model: str,
    out_dir: str | Path,
    log_path: str | Path,
    ref_samples: str | Path | None = None,
    regularizers: Mapping[str, Mapping[str, float]] | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on a ``pairs_logps`` table; write the model folder to ``out_dir`` and the log.

    ``regularizers`` are the config's custom named mixtures (so ``cfg.regularizer`` may name one);
    ``ref_samples`` is a ``responses`` table of mu's samples (required by ``forward_kl``, else unused).
    ``on_step(step, model)`` is called after every optimizer step (and its checkpoint), e.g. by tests.
    Returns ``{"steps", "loss", "out_dir", "resumed_from"}``.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from rspo.artifacts import file_sha256, manifest, read_table, write_table
    from rspo.logps import pad_token_id, resolve_precision
    from rspo.models import load_causal_lm, load_tokenizer

    check_config(cfg)
    lambdas = resolve_lambdas(cfg, regularizers)
    out_dir, log_path, pairs = Path(out_dir), Path(log_path), Path(pairs)
    rows = read_table(pairs, "pairs_logps")
    if not rows:
        raise RSPOError(f"{pairs}: no training pairs")
    _check_rows(rows, str(pairs))  # input errors before any model is loaded
    inputs = {"pairs": pairs, "model": Path(model)}
    samples_by_id = None
    if lambdas.get("forward_kl", 0.0) > 0:
        samples_by_id = load_ref_samples(ref_samples, rows, pairs)
        inputs["ref_samples"] = Path(ref_samples)
    elif ref_samples is not None:
        log.info("ignoring --ref-samples: the regularizer %s has no forward_kl term", lambdas)
    if cfg.accelerate_config is not None:
        inputs["accelerate_config"] = Path(cfg.accelerate_config)

    mixed_precision = resolve_precision(cfg.precision)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision=mixed_precision)
    check_processes(accelerator, cfg)
    if not accelerator.is_main_process:
        logging.getLogger("rspo").setLevel(logging.WARNING)  # the main process logs the run once
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(model)
    net = load_causal_lm(model, dtype="fp32", device="cpu", trainable=True)  # bf16 = autocast over fp32
    disable_dropout(net)
    if cfg.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    examples = build_examples(tokenizer, rows, cfg, samples_by_id, source=str(pairs))
    pad_id = pad_token_id(tokenizer)
    plan = Plan.make(len(examples), cfg, accelerator.num_processes)
    optimizer = make_optimizer(net, cfg)
    scheduler = make_scheduler(optimizer, cfg, plan)
    ds_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds_plugin is not None:
        # DeepSpeed needs the micro-batch size (accelerate reads it from a prepared dataloader, we have
        # none) and clips gradients itself
        configure_deepspeed(ds_plugin.deepspeed_config, cfg)
    net, optimizer = accelerator.prepare(net, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    resolved = {**dataclasses.asdict(cfg), "regularizer": lambdas,
                "regularizer_name": cfg.regularizer if isinstance(cfg.regularizer, str) else None}
    fingerprint = hashlib.sha256(json.dumps({
        "config": resolved, "model": str(model), "num_processes": accelerator.num_processes,
        "inputs": {k: file_sha256(p) if p.is_file() else str(p) for k, p in inputs.items()},
    }, sort_keys=True).encode()).hexdigest()
    checkpoints = Checkpoints(accelerator, out_dir, fingerprint)
    start, records = checkpoints.restore(plan)

    log.info("training %d pairs: %d optimizer steps (%d per epoch, global batch %d), regularizer %s",
             plan.n, plan.total_steps, plan.steps_per_epoch, plan.global_batch, lambdas)
    net.train()
    bar = tqdm(total=plan.total_steps, initial=start, desc="train", unit="step",
               disable=not accelerator.is_main_process)
    for step in range(start, plan.total_steps):
        epoch, micro = plan.micro_batches(step, accelerator.process_index)
        where = f"optimizer step {step + 1} (epoch {epoch + 1})"
        sums: dict[str, float] = {}
        lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        grad_norm = None
        for m, idx in enumerate(micro):
            batch = collate_pairs([examples[i] for i in idx], pad_id, sample_index=epoch)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(net):
                out = compute_loss(net, batch, eta=cfg.eta, lambdas=lambdas, is_clip=cfg.is_clip,
                                   chunk_size=cfg.logps_chunk_size)
                if not torch.isfinite(out.loss):
                    raise NonFiniteLossError(f"non-finite loss ({out.loss.detach().item()}) at {where}: training "
                                             f"stopped; {checkpoints.describe_last()}. Lower the learning rate or eta.")
                accelerator.backward(out.loss)
                if accelerator.sync_gradients != (m == len(micro) - 1):
                    raise RSPOError("internal error: gradient accumulation out of step with the data plan")
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(net.parameters(), cfg.max_grad_norm or float("inf"))
                    grad_norm = None if norm is None else float(norm)  # None under DeepSpeed (it clips itself)
                    if grad_norm is not None and not math.isfinite(grad_norm):
                        raise NonFiniteLossError(f"non-finite gradient norm ({grad_norm}) at {where}: training "
                                                 f"stopped; {checkpoints.describe_last()}. Lower the learning rate.")
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            for k, v in out.metrics().items():
                sums[k] = sums.get(k, 0.0) + v / len(micro)
        keys = sorted(sums)  # the mean over the processes' micro-batches, in float64 like the sums above
        means = accelerator.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64,
                                                device=accelerator.device), "mean")
        record = {"step": step + 1, "epoch": (step + 1) / plan.steps_per_epoch, "lr": lr, "grad_norm": grad_norm,
                  **{k: float(v) for k, v in zip(keys, means.tolist())}}
        records.append(record)
        checkpoints.append_log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{lr:.3g}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < plan.total_steps:
            checkpoints.save(step + 1, plan.epoch_order((step + 1) // plan.steps_per_epoch), records)
        if on_step is not None:
            on_step(step + 1, net)
    bar.close()

    meta = manifest(resolved, inputs)
    meta.update({"steps": plan.total_steps, "resumed_from": start or None, "num_processes": plan.num_processes,
                 "mixed_precision": mixed_precision})
    if accelerator.is_main_process:
        write_table(log_path, records, "train_log")
    save_model(accelerator, net, tokenizer, out_dir, meta, save_dtype=cfg.save_dtype)
    checkpoints.remove()
    accelerator.free_memory()
    return {"steps": plan.total_steps, "loss": records[-1]["loss"] if records else None, "out_dir": str(out_dir),
            "resumed_from": start or None}
