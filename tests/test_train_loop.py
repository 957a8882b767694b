"""The training loop's mechanics, each checked against what the docs promise (docs/implementation-details.md,
items 8-10): gradient clipping, the learning-rate schedule, the data plan (epoch wrap-around, split over
processes), the rotation of mu's samples for forward_kl, weight-decay groups and disabled dropout."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from conftest import F32_EPS, f32_sum_tol  # noqa: E402

from rspo.artifacts import read_table, write_table  # noqa: E402
from rspo.config import TrainConfig  # noqa: E402
from rspo.train import Plan, collate_pairs, disable_dropout, make_optimizer, make_scheduler, train  # noqa: E402

PAIRS = [
    {
        "prompt_id": f"p{i}",
        "prompt": p,
        "chosen": c,
        "rejected": r,
        "chosen_index": 0,
        "rejected_index": 1,
        "p_chosen": 0.6 + 0.05 * i,
        "p_rejected": 0.4 - 0.05 * i,
        "scores": [1.0, -1.0],
    }
    for i, (p, c, r) in enumerate(
        [
            ("Give me three tips for staying healthy.", "Eat well, sleep enough and move.", "No."),
            ("What is the capital of France?", "The capital of France is Paris.", "Lyon."),
            ("List five fruits.", "apple, banana, cherry, mango and pear", "apple"),
            ("Explain why the sky is blue.", "Sunlight scatters off air molecules.", "Because."),
            ("Write a short poem about the sea.", "The waves roll in.", "Sea sea."),
            ("How do I sort a list in Python?", "Use sorted(items).", "You cannot."),
        ]
    )
]
LAMBDAS = {"reverse_kl": 0.5, "chi2": 0.1}
BASE = dict(eta=10.0, regularizer=LAMBDAS, learning_rate=1e-3, checkpoint_every=0, seed=5, logps_batch_size=6)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory, tiny_model_dir_b):
    """The tiny Llama with attention dropout 0.5: pi_t of the runs below (the trainer must switch it off)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("dropout_llama")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir_b, attention_dropout=0.5).save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model_dir_b).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pairs_logps(tmp_path_factory, dropout_model_dir, tiny_model_dir):
    """pairs_logps of PAIRS with pi_t = the dropout model (scored in eval mode) and mu = model a."""
    from rspo.commands.logps import cache_logps

    path = tmp_path_factory.mktemp("loop") / "pairs_logps.jsonl"
    write_table(
        path,
        cache_logps(PAIRS, str(dropout_model_dir), str(tiny_model_dir), TrainConfig(**BASE)),
        "pairs_logps",
    )
    return path


def _tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            **overrides,
        )
    )


def _lr_formula(kind: str, lr: float, warmup: int, total: int, k: int) -> float:
    """The rate of 0-based step k that the docs promise (HF's schedules): linear warm-up over ``warmup``
    steps from 0, then constant, linear decay to 0 at ``total``, or half a cosine down to 0."""
    if k < warmup:
        return lr * k / warmup
    progress = (k - warmup) / max(1, total - warmup)
    return (
        lr
        * {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[
            kind
        ]
    )


# --------------------------------------------------------------------------- the data plan


@pytest.mark.parametrize(
    ("n", "bs", "accum", "world"), [(5, 2, 2, 2), (7, 1, 3, 1), (3, 2, 1, 2), (8, 2, 2, 2)]
)
def test_micro_batches_wrap_around_each_epoch_and_split_across_processes(n, bs, accum, world):
    cfg = TrainConfig(per_device_batch_size=bs, gradient_accumulation_steps=accum, num_epochs=2.5, seed=7)
    plan = Plan.make(n, cfg, world)
    g = bs * accum * world
    assert (plan.global_batch, plan.steps_per_epoch) == (g, math.ceil(n / g))
    assert plan.total_steps == math.ceil(2.5 * plan.steps_per_epoch)
    # N processes = one process that accumulates N times as many micro-batches (the DDP equivalence)
    single = Plan.make(
        n,
        TrainConfig(
            per_device_batch_size=bs, gradient_accumulation_steps=accum * world, num_epochs=2.5, seed=7
        ),
    )
    for step in range(plan.total_steps):
        epoch, k = divmod(step, plan.steps_per_epoch)
        order = plan.epoch_order(epoch)
        assert sorted(order) == list(range(n))
        # the step's G pairs continue the epoch's order and wrap around to the epoch's first pairs
        expected = [order[(k * g + j) % n] for j in range(g)]
        ranks = [plan.micro_batches(step, rank) for rank in range(world)]
        assert all(e == epoch for e, _ in ranks) and all(len(micro) == accum for _, micro in ranks)
        # micro-batch m of process r is the (m * world + r)-th slice of bs pairs of the step
        interleaved = [ranks[r][1][m] for m in range(accum) for r in range(world)]
        assert interleaved == [expected[i * bs : (i + 1) * bs] for i in range(accum * world)]
        assert single.micro_batches(step) == (epoch, interleaved)
    # every epoch sees every pair; the last step repeats the first ceil(n/G) G - n pairs of its epoch
    for epoch in range(2):
        steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
        seen = [i for s in steps for r in range(world) for mb in plan.micro_batches(s, r)[1] for i in mb]
        assert set(seen) == set(range(n)) and len(seen) == plan.steps_per_epoch * g
    # each epoch has its own order, reproducible from the seed alone
    orders = [Plan.make(8, cfg).epoch_order(e) for e in range(3)]
    assert orders[0] != orders[1] != orders[2] and orders == [
        Plan.make(8, cfg).epoch_order(e) for e in range(3)
    ]
    other_seed = Plan.make(
        8, TrainConfig(per_device_batch_size=bs, gradient_accumulation_steps=accum, seed=8)
    )
    assert other_seed.epoch_order(0) != orders[0]


# --------------------------------------------------------------------------- learning rate


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup_ratio", [0.25, 0.0])
def test_lr_schedule_follows_the_documented_formula_step_by_step(kind, warmup_ratio):
    cfg = TrainConfig(
        lr_scheduler=kind,
        warmup_ratio=warmup_ratio,
        learning_rate=1e-3,
        per_device_batch_size=1,
        num_epochs=1,
    )
    plan = Plan.make(10, cfg)
    assert plan.total_steps == 10 and plan.warmup_steps == math.ceil(warmup_ratio * 10)  # 3 or 0
    optimizer = make_optimizer(torch.nn.Linear(2, 2), cfg)
    scheduler = make_scheduler(optimizer, cfg, plan)
    got = []
    for _ in range(plan.total_steps):
        got.append(scheduler.get_last_lr()[0])
        assert all(group["lr"] == got[-1] for group in optimizer.param_groups)  # what optimizer.step uses
        optimizer.step()
        scheduler.step()
    # Python floats: the same few float64 operations in another order, ~1e-16 relative
    want = [_lr_formula(kind, 1e-3, plan.warmup_steps, plan.total_steps, k) for k in range(plan.total_steps)]
    assert got == [pytest.approx(w, rel=1e-12, abs=1e-18) for w in want]


# --------------------------------------------------------------------------- clipping, lr and dropout in a run


@pytest.mark.parametrize("max_grad_norm", [0.5, None])
def test_the_optimizer_steps_on_the_clipped_gradient_at_the_logged_rate(
    tmp_path, pairs_logps, dropout_model_dir, max_grad_norm
):
    """One run of 3 steps (6 pairs, batch 2): at every step the optimizer receives the raw gradient scaled by
    min(1, max_grad_norm / its norm) (None: the raw gradient itself), the log has the raw norm, and the
    rates are the linear warm-up's (the first is 0: the weights do not move)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    raw, steps = {}, []  # raw gradients as backward leaves them; (raw, seen) per optimizer step

    def keep_raw(p):
        raw[p] = p.grad.detach().clone()

    def record(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        steps.append(([raw[p] for p in params], [p.grad.detach().clone() for p in params]))

    from rspo.models import load_causal_lm

    weights = [
        load_causal_lm(str(dropout_model_dir), dtype="fp32", device="cpu").state_dict()
    ]  # after each step

    def on_step(step, model):
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    real_make_optimizer = make_optimizer

    def make_optimizer_with_hooks(model, cfg):  # the raw gradient of every parameter, before any clip
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(keep_raw)
        return real_make_optimizer(model, cfg)

    cfg = TrainConfig(
        **{
            **BASE,
            "per_device_batch_size": 2,
            "num_epochs": 1,
            "lr_scheduler": "linear",
            "warmup_ratio": 0.5,
            "max_grad_norm": max_grad_norm,
        }
    )
    handle = register_optimizer_step_pre_hook(record)
    mp = pytest.MonkeyPatch()
    mp.setattr("rspo.train.make_optimizer", make_optimizer_with_hooks)
    try:
        train(
            cfg,
            pairs=pairs_logps,
            model=str(dropout_model_dir),
            out_dir=tmp_path / "m",
            log_path=tmp_path / "l.jsonl",
            on_step=on_step,
        )
    finally:
        handle.remove()
        mp.undo()
    log = read_table(tmp_path / "l.jsonl", "train_log")
    assert len(steps) == len(log) == 3

    def norm(ts):
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in ts])).item()

    for (raw_grads, seen), record_ in zip(steps, log):
        raw_norm = norm(raw_grads)
        # the logged norm is the raw one: two float32 norms of the same ~1e5 entries (~17 eps apart)
        assert record_["grad_norm"] == pytest.approx(raw_norm, rel=32 * F32_EPS)
        if max_grad_norm is None:
            assert all(torch.equal(s, r) for s, r in zip(seen, raw_grads))
            continue
        assert raw_norm > 2 * max_grad_norm  # eta = 10: the clip is active at every step
        # torch scales by max / (norm + 1e-6) in float32: the norm's ~32 eps plus one rounding of the product
        scale = max_grad_norm / raw_norm
        for s, r in zip(seen, raw_grads):
            assert torch.allclose(s, r * scale, rtol=64 * F32_EPS, atol=0)
        assert norm(seen) == pytest.approx(max_grad_norm, rel=64 * F32_EPS)

    # warm-up ceil(0.5 * 3) = 2 steps, then linear decay: 0, lr / 2, lr
    assert [r["lr"] for r in log] == [
        pytest.approx(_lr_formula("linear", 1e-3, 2, 3, k), rel=1e-12) for k in range(3)
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # rate 0: step 1 moved nothing
    assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[0])
    # dropout is off although the model has attention dropout 0.5: at step 1 pi_theta = pi_t, so a = 0
    # up to the float32 rounding of the sums in another batch shape (with dropout on, |a| would be O(1))
    tol = max(
        f32_sum_tol(r[f"last_logp_{c}"], r[f"{c}_tokens"])
        for r in read_table(pairs_logps, "pairs_logps")
        for c in ("chosen", "rejected")
    )
    assert abs(log[0]["a_chosen"]) <= tol and abs(log[0]["a_rejected"]) <= tol


# --------------------------------------------------------------------------- forward_kl samples


def test_each_epoch_uses_the_next_of_mu_samples_for_forward_kl(
    tmp_path, pairs_logps, dropout_model_dir, monkeypatch
):
    """3 samples of mu per prompt, 4 epochs of one step each: epochs 1-4 use samples 0, 1, 2, 0."""
    import rspo.train
    from rspo.logps import encode_group
    from rspo.models import load_tokenizer

    rows = read_table(pairs_logps, "pairs_logps")
    samples = {
        r["prompt_id"]: [f"Sample {j} of mu, {'word ' * j}for {r['prompt_id']}." for j in range(3)]
        for r in rows
    }
    ref = tmp_path / "ref.jsonl"
    write_table(
        ref,
        [
            {
                "prompt_id": r["prompt_id"],
                "prompt": r["prompt"],
                "responses": samples[r["prompt_id"]],
                "num_tokens": [5, 6, 7],
                "finish_reasons": ["stop"] * 3,
                "generator": "mu",
                "sampling": {"n": 3},
            }
            for r in rows
        ],
        "responses",
    )
    batches = []

    def recording_collate(examples, pad_id, sample_index=0):
        batch = collate_pairs(examples, pad_id, sample_index)
        batches.append(batch)
        return batch

    monkeypatch.setattr(rspo.train, "collate_pairs", recording_collate)
    cfg = TrainConfig(
        **{**BASE, "regularizer": {"forward_kl": 0.1}, "per_device_batch_size": 6, "num_epochs": 4}
    )
    train(
        cfg,
        pairs=pairs_logps,
        model=str(dropout_model_dir),
        out_dir=tmp_path / "m",
        log_path=tmp_path / "l.j",
        ref_samples=ref,
    )
    assert len(batches) == 4
    tok = load_tokenizer(str(dropout_model_dir))

    def encoded(j):  # sample j of every prompt, encoded as the trainer does
        return {
            tuple(
                encode_group(
                    tok,
                    r["prompt"],
                    [samples[r["prompt_id"]][j]],
                    max_length=cfg.max_length,
                    max_prompt_length=cfg.max_prompt_length,
                )[0].input_ids
            )
            for r in rows
        }

    for epoch, batch in enumerate(batches):
        b = batch["win_probs"].shape[0]
        rows_ = [
            tuple(ids[: int(m.sum())].tolist())
            for ids, m in zip(batch["input_ids"][2 * b :], batch["attention_mask"][2 * b :])
        ]
        assert b == 6 and set(rows_) == encoded(epoch % 3), epoch


# --------------------------------------------------------------------------- optimizer groups and dropout


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_weight_decay_applies_to_matrices_only(optimizer):
    """With zero gradients a step moves only what weight decay pulls: every weight matrix (embeddings,
    projections), never a norm's weight or a bias. AdamW's decoupled decay scales by exactly 1 - lr wd."""
    model = _tiny_llama(attention_bias=True, mlp_bias=True)
    cfg = TrainConfig(optimizer=optimizer, weight_decay=0.1, learning_rate=0.01)
    opt = make_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    matrices = {
        n for n in before if ("proj" in n or "embed" in n or "lm_head" in n) and n.endswith(".weight")
    }
    assert len(matrices) == 9 and moved == matrices  # embed, lm_head, q, k, v, o, gate, up, down
    assert any("norm" in n for n in before) and any(n.endswith(".bias") for n in before)
    if optimizer == "adamw":
        for n in matrices:  # p (1 - lr wd): one float32 rounding of the product
            p = dict(model.named_parameters())[n]
            assert torch.allclose(p, before[n] * (1 - 0.01 * 0.1), rtol=F32_EPS, atol=0)
    assert (
        TrainConfig().weight_decay == 0.0
        and make_optimizer(model, TrainConfig()).param_groups[0]["weight_decay"] == 0
    )


def _gpt2_with_dropout():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=64,
            n_positions=32,
            n_embd=32,
            n_layer=1,
            n_head=2,
            resid_pdrop=0.5,
            embd_pdrop=0.5,
            attn_pdrop=0.5,
        )
    )


@pytest.mark.parametrize(
    "build",
    [_gpt2_with_dropout, lambda: _tiny_llama(attention_dropout=0.5)],
    ids=["nn.Dropout (GPT-2)", "attention_dropout (Llama)"],
)
def test_disable_dropout_makes_train_mode_forwards_deterministic(build):
    model = build()
    ids = torch.arange(1, 17).reshape(2, 8)
    with torch.no_grad():
        model.eval()
        plain = model(input_ids=ids).logits
        model.train()
        torch.manual_seed(1)
        first = model(input_ids=ids).logits
        second = model(input_ids=ids).logits
        assert not torch.allclose(first, second, rtol=0.01, atol=0.01)  # dropout 0.5 is on in train mode
        disable_dropout(model)
        assert model.training
        again = [model(input_ids=ids).logits for _ in range(2)]
    assert torch.equal(again[0], again[1]) and torch.equal(again[0], plain)  # the same kernels as eval mode
