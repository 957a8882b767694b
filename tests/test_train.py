"""The trainer: cached-vs-live equivalence, learning, accumulation, resume, NaN guard, CLI, forward_kl."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

torch = pytest.importorskip("torch")

from conftest import F32_EPS, f32_sum_tol  # noqa: E402

from rspo.artifacts import ArtifactError, read_json, read_table, write_table  # noqa: E402
from rspo.config import TrainConfig  # noqa: E402
from rspo.errors import RSPOError  # noqa: E402
from rspo.logps import encode_group, sequence_logps  # noqa: E402
from rspo.train import build_examples, collate_pairs, compute_loss, partial_dir, train  # noqa: E402

_TEXTS = [
    ("Give me three tips for staying healthy.", "Eat well, sleep enough and move every day.", "No."),
    ("What is the capital of France?", "The capital of France is Paris.", "It is Lyon, I think, or maybe Paris."),
    ("List five fruits.", "apple, banana, cherry, mango and pear", "apple"),
    ("Explain why the sky is blue.", "Sunlight scatters off air molecules.", "Because it is."),
    ("Write a short poem about the sea.", "The waves roll in, the gulls cry out.", "Sea sea sea sea."),
    ("How do I sort a list in Python?", "Use sorted(items) or items.sort().", "You cannot."),
]
PAIRS = [
    {"prompt_id": f"p{i}", "prompt": p, "chosen": c, "rejected": r, "chosen_index": 0, "rejected_index": 1,
     "p_chosen": 0.55 + 0.05 * i, "p_rejected": 0.45 - 0.05 * i, "scores": [1.0, -1.0]}
    for i, (p, c, r) in enumerate(_TEXTS)
]
# eta small so that the tiny model can reach the targets with a few steps; a custom mixture uses all
# three sample-based regularizers so that mu's cached log-probs enter loss and gradient
LAMBDAS = {"reverse_kl": 0.5, "is_forward_kl": 0.1, "chi2": 0.1}
BASE = dict(eta=10.0, regularizer=LAMBDAS, learning_rate=3e-5, lr_scheduler="constant", warmup_ratio=0.0,
            checkpoint_every=0, seed=3, logps_batch_size=4)


@pytest.fixture(scope="module")
def pairs_logps(tmp_path_factory, tiny_model_dir, tiny_model_dir_b):
    """pairs_logps of PAIRS with pi_t = model b and mu = model a (cached by the logps step)."""
    from rspo.commands.logps import cache_logps

    d = tmp_path_factory.mktemp("pairs")
    rows = cache_logps(PAIRS, str(tiny_model_dir_b), str(tiny_model_dir), TrainConfig(logps_batch_size=4))
    path = d / "pairs_logps.jsonl"
    write_table(path, rows, "pairs_logps")
    return path


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from rspo.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _load(path, trainable=False):
    from rspo.models import load_causal_lm

    return load_causal_lm(str(path), dtype="fp32", device="cpu", trainable=trainable)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _norm(tensors) -> float:
    """The 2-norm of a list of tensors taken together (as ``clip_grad_norm_`` computes it)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])).item()


def _loss_slopes(rows, eta, lambdas):
    """Bounds of |change of a loss term| per unit shift of every log-prob sum of ``rows`` (cached or the
    policy's) at pi_theta = pi_t (|a| < 1, d = log pi_t - log mu): two columns, each a batch mean, so SPPO
    2 (max|eta (p - 1/2)| + 1), reverse_kl 4 max|d|, is_forward_kl 2 max e^-d, chi2 2 max e^d; the loss
    adds lambda times each."""
    cols = [(r[f"p_{c}"], r[f"last_logp_{c}"] - r[f"ref_logp_{c}"]) for r in rows for c in ("chosen", "rejected")]
    s = {"sppo": 2 * (max(abs(eta * (p - 0.5)) for p, _ in cols) + 1),
         "reverse_kl": 4 * max(abs(d) for _, d in cols),
         "is_forward_kl": 2 * max(math.exp(-d) for _, d in cols), "chi2": 2 * max(math.exp(d) for _, d in cols)}
    s["loss"] = s["sppo"] + sum(lam * s[k] for k, lam in lambdas.items())
    return s


def _cached_sum_tolerance(rows):
    """The largest float32 tolerance (f32_sum_tol) of the cached sums of pi_t and mu in ``rows``."""
    return max(f32_sum_tol(r[f"{m}_logp_{c}"], r[f"{c}_tokens"]) for r in rows for m in ("last", "ref")
               for c in ("chosen", "rejected"))


def test_cached_logps_give_the_same_loss_and_gradient_as_live_models(pairs_logps, tok, tiny_model_dir,
                                                                     tiny_model_dir_b):
    from rspo.losses import rspo_loss

    cfg = TrainConfig(**BASE)
    rows = read_table(pairs_logps, "pairs_logps")[:5]
    batch = collate_pairs(build_examples(tok, rows, cfg), tok.pad_token_id)  # 5 pairs, other padding than the cache

    policy = _load(tiny_model_dir_b, trainable=True)  # pi_theta starts at pi_t
    cached = compute_loss(policy, batch, eta=cfg.eta, lambdas=LAMBDAS)
    cached.loss.backward()
    grads_cached = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()

    # the authors' design: the frozen pi_t and mu run on the same batch at every step
    last_model, ref_model = _load(tiny_model_dir_b), _load(tiny_model_dir)
    with torch.no_grad():
        last, _ = sequence_logps(last_model, batch)
        ref, _ = sequence_logps(ref_model, batch)
    pol, _ = sequence_logps(policy, batch)
    b = len(rows)
    live = rspo_loss(torch.stack([pol[:b], pol[b:]], 1), torch.stack([last[:b], last[b:]], 1),
                     torch.stack([ref[:b], ref[b:]], 1), batch["win_probs"], eta=cfg.eta, regularizer=LAMBDAS)
    live.loss.backward(retain_graph=True)  # the graph serves the per-sequence gradients below
    grads_live = [p.grad.clone() for p in policy.parameters()]

    assert abs(cached.d_chosen.item()) > 0.1  # mu differs from pi_t: the regularizers are not trivial
    # pi_theta's sums are the same computation on both sides (same model, same batch): only the cached
    # sums of pi_t and mu differ from the live ones, by float32 rounding of another batch shape
    tol_s = _cached_sum_tolerance(rows)
    cached_last = torch.tensor([r["last_logp_chosen"] for r in rows] + [r["last_logp_rejected"] for r in rows])
    cached_ref = torch.tensor([r["ref_logp_chosen"] for r in rows] + [r["ref_logp_rejected"] for r in rows])
    assert (cached_last - last).abs().max() <= tol_s and (cached_ref - ref).abs().max() <= tol_s
    # a and d move by tol_s at most; the loss terms by their slopes times that
    for name in ("a_chosen", "a_rejected", "d_chosen", "d_rejected"):
        assert getattr(cached, name).item() == pytest.approx(getattr(live, name).item(), rel=0, abs=tol_s), name
    for name, slope in _loss_slopes(rows, cfg.eta, LAMBDAS).items():
        assert getattr(cached, name).item() == pytest.approx(getattr(live, name).item(), rel=0,
                                                             abs=slope * tol_s), name
    # The gradient is sum_i w_i grad S_i with the same grad S_i (the policy's sums) on both sides and
    # w_i = dL/dS_i. A shift of the cached sums by <= tol_s moves w_i by at most the loss's curvature
    # times tol_s: (1/B) [1 (SPPO in a) + (2 l_rkl + l_isfkl e^-d + l_chi2 e^d) (in d)]. Per element:
    # |dg| <= sum_i (that bound + 8 float32 roundings of |w_i|) |dS_i/dtheta|.
    d = (pol - ref).detach()
    lam = LAMBDAS
    dw_bound = (1 + (2 * lam["reverse_kl"] + lam["is_forward_kl"] * torch.exp(-d) + lam["chi2"] * torch.exp(d))
                ) * tol_s / b
    params = list(policy.parameters())
    w = torch.autograd.grad(live.loss, pol, retain_graph=True)[0]  # detached dL/dS_i
    bound = [torch.zeros_like(p) for p in params]
    for i in range(2 * b):
        for acc, g in zip(bound, torch.autograd.grad(pol[i], params, retain_graph=True)):
            acc += (dw_bound[i] + 8 * F32_EPS * w[i].abs()) * g.abs()
    for g_cached, g_live, tol in zip(grads_cached, grads_live, bound):
        assert ((g_cached - g_live).abs() <= tol).all()
    assert any(g.abs().sum() > 0 for g in grads_cached)
    # the bound (0.2% of the gradient's norm here) is far below what a wrong cached column would do:
    # move w, hence g, by O(1) relative
    assert _norm(bound) < 0.01 * _norm(grads_live)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path, pairs_logps, tok, tiny_model_dir_b):
    cfg = TrainConfig(**{**BASE, "per_device_batch_size": 6, "num_epochs": 6})  # the whole set every step
    rows = read_table(pairs_logps, "pairs_logps")
    batch = collate_pairs(build_examples(tok, rows, cfg), tok.pad_token_id)
    with torch.no_grad():
        before = compute_loss(_load(tiny_model_dir_b), batch, eta=cfg.eta, lambdas=LAMBDAS).loss.item()
    out = tmp_path / "model"
    result = train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=out, log_path=tmp_path / "log.jsonl")
    with torch.no_grad():
        after = compute_loss(_load(out), batch, eta=cfg.eta, lambdas=LAMBDAS).loss.item()
    log = read_table(tmp_path / "log.jsonl", "train_log")
    assert result["steps"] == 6 and [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    # step 1 logs the loss before its update, on the same pairs in another row order: the policy's
    # float32 sums (= pi_t's at step 1) move by _cached_sum_tolerance, the loss by its slope times that
    tol = _loss_slopes(rows, cfg.eta, LAMBDAS)["loss"] * _cached_sum_tolerance(rows)
    assert log[0]["loss"] == pytest.approx(before, rel=0, abs=tol)
    assert after < 0.85 * before
    assert all(b < a for a, b in zip([r["loss"] for r in log], [r["loss"] for r in log][1:] + [after]))


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, pairs_logps, tiny_model_dir_b):
    logs = []
    for bs, accum in [(4, 1), (2, 2), (1, 4)]:
        cfg = TrainConfig(**{**BASE, "per_device_batch_size": bs, "gradient_accumulation_steps": accum,
                             "num_epochs": 0.5})  # 6 pairs, global batch 4: 2 steps per epoch -> 1 step
        d = tmp_path / f"{bs}x{accum}"
        assert train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=d / "m",
                     log_path=d / "log.jsonl")["steps"] == 1
        logs.append(read_table(d / "log.jsonl", "train_log")[0])
    # Another micro-batch shape runs other float32 kernels, so each log-prob SUM may move by a few
    # float32 steps at its own magnitude: a and d (differences of sums up to |S| ~ 145 nats here, one
    # step = 1.7e-5) get 8 steps of the largest sum. The loss terms are smooth in a and d with slopes
    # below 1 + eta (SPPO: |a - eta (p - 1/2)| <= eta / 2; reverse_kl 2|d|; the clipped exponentials
    # exp(|d|) < e here), so they get (1 + eta) times that. The gradient norm's relative error is the
    # error of a over the SPPO residual |a - eta (p - 1/2)| >= 0.5 here, hence 2x the same bound, relative.
    scale = max(abs(row[k]) for row in read_table(pairs_logps, "pairs_logps")
                for k in ("last_logp_chosen", "last_logp_rejected", "ref_logp_chosen", "ref_logp_rejected"))
    tol_ad = 8 * torch.finfo(torch.float32).eps * scale
    tols = {"a_chosen": tol_ad, "a_rejected": tol_ad, "d_chosen": tol_ad, "d_rejected": tol_ad}
    tols.update(dict.fromkeys(("loss", "sppo", "reverse_kl", "is_forward_kl", "chi2"), (1 + BASE["eta"]) * tol_ad))
    for other in logs[1:]:
        for key, tol in tols.items():
            assert other[key] == pytest.approx(logs[0][key], rel=0, abs=tol), key
        assert other["grad_norm"] == pytest.approx(logs[0]["grad_norm"], rel=2 * tol_ad, abs=0)
    # the bound is tight enough to catch an accumulation bug: a loss not divided by the number of
    # micro-batches would change the gradient norm by a factor of 4 (2x2: 2)
    assert 2 * tol_ad < 0.01


class _Killed(Exception):
    pass


def test_kill_and_resume_reaches_the_same_weights(tmp_path, pairs_logps, tiny_model_dir_b):
    # 6 pairs, 1 x 2 accumulation -> 3 steps per epoch, 2 epochs = 6 steps; warm-up makes the lr move
    cfg = TrainConfig(**{**BASE, "per_device_batch_size": 1, "gradient_accumulation_steps": 2, "num_epochs": 2,
                         "lr_scheduler": "linear", "warmup_ratio": 0.3, "checkpoint_every": 2, "optimizer": "rmsprop"})
    ref_out = tmp_path / "uninterrupted"
    train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=ref_out, log_path=tmp_path / "ref.jsonl")

    out, log_path = tmp_path / "resumed", tmp_path / "resumed.jsonl"

    def kill_at_5(step, model):
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=out, log_path=log_path, on_step=kill_at_5)
    assert not out.exists() and not log_path.exists()
    state = json.loads((partial_dir(out) / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4

    seen = []
    result = train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=out, log_path=log_path,
                   on_step=lambda step, model: seen.append(step))
    assert result["resumed_from"] == 4 and seen == [5, 6]
    assert not partial_dir(out).exists()
    a, b = _weights(ref_out), _weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], _weights(tiny_model_dir_b)[k]) for k in a)  # it did train
    assert read_table(log_path, "train_log") == read_table(tmp_path / "ref.jsonl", "train_log")


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path, pairs_logps, tiny_model_dir_b):
    cfg = TrainConfig(**{**BASE, "per_device_batch_size": 2, "checkpoint_every": 1})
    out = tmp_path / "m"

    def kill_at_2(step, model):
        if step == 2:
            raise _Killed

    with pytest.raises(_Killed):
        train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=out, log_path=tmp_path / "l.jsonl",
              on_step=kill_at_2)
    other = TrainConfig(**{**BASE, "per_device_batch_size": 2, "checkpoint_every": 1, "learning_rate": 6e-5})
    result = train(other, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=out, log_path=tmp_path / "l.jsonl")
    assert result["resumed_from"] is None


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, pairs_logps, tiny_model_dir_b):
    cfg = TrainConfig(**{**BASE, "per_device_batch_size": 2, "checkpoint_every": 1})
    out, log_path = tmp_path / "m", tmp_path / "log.jsonl"

    def corrupt_after_2(step, model):
        if step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    with pytest.raises(RSPOError, match=r"non-finite loss \(nan\) at optimizer step 3") as exc:
        train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=out, log_path=log_path,
              on_step=corrupt_after_2)
    assert "last good checkpoint (step 2)" in str(exc.value)
    ckpt = partial_dir(out) / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())
    assert not out.exists() and not log_path.exists()


def test_cli_logps_then_train_end_to_end(tmp_path, tiny_model_dir, tiny_model_dir_b):
    import rspo
    from rspo.cli import main

    pairs, cache = tmp_path / "pairs.jsonl", tmp_path / "pairs_logps.jsonl"
    write_table(pairs, PAIRS[:4], "pairs")
    params = {"eta": 10.0, "regularizer": "myreg", "learning_rate": 1e-4, "per_device_batch_size": 2,
              "num_epochs": 1, "logps_batch_size": 3, "optimizer": "adamw", "max_length": 64, "max_prompt_length": 32}
    assert main(["logps", "--pairs", str(pairs), "--last-model", str(tiny_model_dir_b), "--ref-model",
                 str(tiny_model_dir), "--out", str(cache), "--params", json.dumps(params)]) == 0
    out, log_path = tmp_path / "iter1" / "model", tmp_path / "iter1" / "train_log.jsonl"
    assert main(["train", "--pairs", str(cache), "--model", str(tiny_model_dir_b), "--out", str(out), "--log",
                 str(log_path), "--params", json.dumps(params),
                 "--regularizers", json.dumps({"myreg": {"chi2": 0.2, "reverse_kl": 0.3}})]) == 0

    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() == _load(tiny_model_dir_b).num_parameters()
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    meta = read_json(out / "manifest.json")
    assert meta["rspo_version"] == rspo.__version__ and "git_commit" in meta
    assert meta["config"]["regularizer"] == {"chi2": 0.2, "reverse_kl": 0.3}
    assert meta["config"]["regularizer_name"] == "myreg"
    assert meta["config"]["optimizer"] == "adamw" and meta["config"]["learning_rate"] == 1e-4
    assert meta["inputs"]["pairs"]["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    assert meta["steps"] == 2
    log = read_table(log_path, "train_log")
    assert [r["step"] for r in log] == [1, 2] and [r["epoch"] for r in log] == [0.5, 1.0]
    for r in log:
        assert {"loss", "lr", "sppo", "reverse_kl", "is_forward_kl", "chi2", "a_chosen", "a_rejected", "d_chosen",
                "d_rejected", "grad_norm", "epoch"} <= r.keys()
        # the float32 loss is that sum of positive terms: a few roundings of <= eps / 2 each, relative
        assert r["loss"] == pytest.approx(r["sppo"] + 0.2 * r["chi2"] + 0.3 * r["reverse_kl"], rel=8 * F32_EPS)
    assert not partial_dir(out).exists()
    assert not list(out.parent.glob(".*"))  # no temporary folder left behind

    # an unknown regularizer name is a one-line error
    rc = main(["train", "--pairs", str(cache), "--model", str(tiny_model_dir_b), "--out", str(tmp_path / "x"),
               "--log", str(tmp_path / "x.jsonl"), "--params", json.dumps({**params, "regularizer": "nope"})])
    assert rc == 1


def _token_mean_nll(model, enc):
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    terms = [-torch.log_softmax(logits[t - 1], -1)[enc.input_ids[t]].item()
             for t in range(enc.prompt_len, len(enc.input_ids))]
    return sum(terms) / len(terms)


def test_forward_kl_uses_mu_samples_joined_by_prompt_id(tmp_path, pairs_logps, tok, tiny_model_dir_b):
    rows = read_table(pairs_logps, "pairs_logps")
    samples = tmp_path / "ref_responses.jsonl"
    ref_rows = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "responses": [f"Sample {i} of mu.", "Other."],
                 "num_tokens": [4, 2], "finish_reasons": ["stop", "stop"], "generator": "mu",
                 "sampling": {"n": 2}} for i, r in enumerate(reversed(rows))]  # another row order
    write_table(samples, ref_rows, "responses")
    lam = {"forward_kl": 0.1}
    cfg = TrainConfig(**{**BASE, "regularizer": lam, "per_device_batch_size": 6, "num_epochs": 1})
    train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=tmp_path / "m", log_path=tmp_path / "l.jsonl",
          ref_samples=samples)
    (rec,) = read_table(tmp_path / "l.jsonl", "train_log")

    policy = _load(tiny_model_dir_b)
    by_id = {r["prompt_id"]: r for r in ref_rows}
    encs = [encode_group(tok, r["prompt"], [by_id[r["prompt_id"]]["responses"][0]], max_length=1024,
                         max_prompt_length=512)[0] for r in rows]
    nlls = [_token_mean_nll(policy, e) for e in encs]
    # float32 token sums (<= n_max tokens) against the float64 loop: f32_sum_tol at the mean's magnitude
    n_max = max(e.num_response_tokens for e in encs)
    assert rec["forward_kl"] == pytest.approx(sum(nlls) / len(nlls), rel=0, abs=f32_sum_tol(rec["forward_kl"], n_max))
    assert rec["loss"] == pytest.approx(rec["sppo"] + 0.1 * rec["forward_kl"], rel=8 * F32_EPS)  # as in the CLI test
    assert math.isfinite(rec["grad_norm"])

    with pytest.raises(RSPOError, match="--ref-samples"):
        train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=tmp_path / "n", log_path=tmp_path / "n.j")
    write_table(samples, ref_rows[1:], "responses")
    with pytest.raises(ArtifactError, match="no samples of mu for 1 prompt_id"):
        train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=tmp_path / "n", log_path=tmp_path / "n.j",
              ref_samples=samples)


def test_max_grad_norm_none_leaves_the_gradient_unclipped(tmp_path, pairs_logps, tok, tiny_model_dir_b):
    """max_grad_norm: null (the paper presets) = the optimizer steps on the raw gradient, whose norm here
    is far above 1 (eta = 10), so a clip at the old default 1.0 would have changed it."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen = []  # the gradient norm the optimizer sees when it steps

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    cfg = TrainConfig(**{**BASE, "per_device_batch_size": 6, "num_epochs": 1, "max_grad_norm": None})
    handle = register_optimizer_step_pre_hook(record)
    try:
        train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=tmp_path / "m", log_path=tmp_path / "l.j")
    finally:
        handle.remove()
    (logged,) = [r["grad_norm"] for r in read_table(tmp_path / "l.j", "train_log")]
    # the gradient of that one step, computed here from the loss on the same 6 pairs (another row order)
    policy = _load(tiny_model_dir_b, trainable=True)
    compute_loss(policy, collate_pairs(build_examples(tok, read_table(pairs_logps, "pairs_logps"), cfg),
                                       tok.pad_token_id), eta=cfg.eta, lambdas=LAMBDAS).loss.backward()
    direct = _norm([p.grad for p in policy.parameters()])
    # the same pairs in another row order: as in the accumulation test, the norm's relative error is
    # that of a (the policy's float32 sums) over the SPPO residual >= 0.5, so 2x the sums' tolerance;
    # far below the factor a clip at 1.0 would apply (direct > 1)
    rel = 2 * _cached_sum_tolerance(read_table(pairs_logps, "pairs_logps"))
    assert direct > 1.0 and rel < 0.01 and seen == [pytest.approx(direct, rel=rel)]
    # two float32 norms of the same ~1e5 gradient entries: blocked sums, error ~eps log2(1e5) = 17 eps
    assert logged == pytest.approx(seen[0], rel=32 * F32_EPS)


def test_saved_weights_are_the_trained_weights_rounded_to_save_dtype(tmp_path, pairs_logps, tiny_model_dir_b):
    final = {}

    def capture(step, model):
        final.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    cfg = TrainConfig(**{**BASE, "per_device_batch_size": 3, "num_epochs": 1, "save_dtype": "bf16"})
    out = tmp_path / "m"
    train(cfg, pairs=pairs_logps, model=str(tiny_model_dir_b), out_dir=out, log_path=tmp_path / "l.jsonl",
          on_step=capture)
    saved = _weights(out)
    assert saved and all(v.dtype == torch.bfloat16 for v in saved.values())
    assert all(torch.equal(saved[k], final[k].to(torch.bfloat16)) for k in saved)  # round-to-nearest of pi_{t+1}
    assert not all(torch.equal(saved[k].float(), final[k]) for k in saved)  # rounding did change weights
    assert read_json(out / "config.json")["dtype"] == "bfloat16"
    size = (out / "model.safetensors").stat().st_size / (tiny_model_dir_b / "model.safetensors").stat().st_size
    assert 0.45 < size < 0.55  # half of the fp32 file (plus the same header)
    # the next iteration starts from exactly these weights, in fp32
    reloaded = _load(out).state_dict()
    assert all(torch.equal(reloaded[k], saved[k].float()) for k in saved)
    assert read_json(out / "manifest.json")["config"]["save_dtype"] == "bf16"


def test_training_and_forward_kl_score_the_sampled_ids(tmp_path, pairs_logps, tok):
    """Rows that carry the sampled ids are encoded from them (no EOS added), mu's samples too."""
    from rspo.chat import encode_prompt
    from rspo.train import load_ref_samples

    rows = read_table(pairs_logps, "pairs_logps")[:2]
    with_ids = [{**r, "chosen_token_ids": [5, 6, tok.eos_token_id], "rejected_token_ids": [7, 8, 9]} for r in rows]
    samples = tmp_path / "ref.jsonl"
    write_table(samples, [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "responses": ["x", "y"],
                           "token_ids": [[10, 11], [12, tok.eos_token_id]], "num_tokens": [2, 2],
                           "finish_reasons": ["length", "stop"], "generator": "mu", "sampling": {"n": 2}}
                          for r in rows], "responses")
    by_id = load_ref_samples(samples, rows, pairs_logps)
    examples = build_examples(tok, with_ids, TrainConfig(**BASE), by_id)
    for r, e in zip(rows, examples):
        prompt = encode_prompt(tok, r["prompt"])
        assert list(e.chosen.input_ids) == prompt + [5, 6, tok.eos_token_id]
        assert list(e.rejected.input_ids) == prompt + [7, 8, 9]
        assert [list(s.input_ids) for s in e.ref_samples] == [prompt + [10, 11], prompt + [12, tok.eos_token_id]]
    # without ids (an external file) the texts are tokenized with the prompt and get the EOS
    (plain,) = build_examples(tok, rows[:1], TrainConfig(**BASE))
    assert plain.chosen.input_ids[-1] == tok.eos_token_id
    for bad in ([len(tok) + 5], [-1], ["5"], [5.0]):  # other tokenizer's ids, or not ids at all
        with pytest.raises(ArtifactError, match="not one of the tokenizer's"):
            build_examples(tok, [{**with_ids[0], "rejected_token_ids": bad}], TrainConfig(**BASE))
