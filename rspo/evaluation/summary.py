"""Tables, the figure and the paper comparison over all evaluated iterates.

Input: the index JSON of ``rspo summarize`` (docs/pipeline.md), a list of
``{"reg", "iteration", "metrics", "self_bleu", "train_log", "pairs_stats"}`` (paths; the last three
may be null). Outputs, all plain files (for ``snakemake --report``):

* ``summary.csv``: one row per (reg, iteration); columns in :data:`BASE_COLUMNS` plus one
  ``train_<term>_mean`` per regularizer term found in the training logs;
* ``summary.md``: the same rows, then the paper's layout (rows = regularizers; column groups
  LC WR / WR / length, one column per iteration);
* ``plots/winrate.png``: LC WR, WR and length against the iteration, one line per regularizer;
* ``paper_comparison.md``: our numbers beside the paper's (``rspo/data/paper_results.json``: the
  Mistral-7B-Instruct-v0.2 table, and under ``other_base_models`` the Llama-3-8B-Instruct one, chosen
  by the run's policy; any other policy is compared with the Mistral table).
"""

from __future__ import annotations

import csv
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from rspo.artifacts import ArtifactError, atomic_path, read_json, read_table, write_text

BASE_COLUMNS = [
    "reg",
    "iteration",
    "lc_win_rate",
    "lc_standard_error",
    "lc_method",
    "win_rate",
    "standard_error",
    "avg_length",
    "self_bleu",
    "judge",
    "n",
    "generator",
    "reference",
    "train_steps",
    "train_loss_final",
    "train_loss_mean",
    "train_sppo_mean",
    "pairs_n",
    "pairs_dropped_no_signal",
    "pairs_mean_p_chosen",
    "pairs_mean_p_rejected",
]
INDEX_KEYS = ("reg", "iteration", "metrics", "self_bleu", "train_log", "pairs_stats")
METRIC_KEYS = ("win_rate", "n_total", "avg_length", "length_controlled_winrate", "lc_method")


def load_paper_results(base_model: str | None = None) -> dict[str, Any]:
    """The paper's table for ``base_model`` (a hub id; a pinned ``@revision`` is ignored): the Mistral
    table (the file's top level) unless an entry of ``other_base_models`` names that model."""
    data = json.loads(resources.files("rspo.data").joinpath("paper_results.json").read_text())
    others = data.pop("other_base_models", [])
    if base_model:
        name = base_model.rpartition("@")[0] if "@" in base_model else base_model
        for table in others:
            if table["base_model"] == name:
                return table
    return data


def _mean(values: list[float]) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(values) / len(values) if values else None


def train_stats(path: str | Path) -> dict[str, Any]:
    """Steps, final/mean loss, mean SPPO term and mean of each regularizer term of a ``train_log`` table."""
    from rspo.losses import REGULARIZER_TERMS

    rows = read_table(path, "train_log")
    out: dict[str, Any] = {
        "train_steps": len(rows),
        "train_loss_final": float(rows[-1]["loss"]) if rows else None,
        "train_loss_mean": _mean([r["loss"] for r in rows]),
        "train_sppo_mean": _mean([r["sppo"] for r in rows if "sppo" in r]),
    }
    for term in REGULARIZER_TERMS:
        if any(term in r for r in rows):
            out[f"train_{term}_mean"] = _mean([r[term] for r in rows if term in r])
    return out


def pairs_stats(path: str | Path) -> dict[str, Any]:
    s = read_json(path)
    if not isinstance(s, dict):
        raise ArtifactError(f"{path}: expected a JSON object (rspo pairs --stats)")
    return {
        "pairs_n": s.get("n_pairs"),
        "pairs_dropped_no_signal": s.get("n_dropped_no_signal"),
        "pairs_mean_p_chosen": s.get("mean_p_chosen"),
        "pairs_mean_p_rejected": s.get("mean_p_rejected"),
    }


def collect(index: list[dict[str, Any]], where: str = "index") -> list[dict[str, Any]]:
    """One summary row per index entry, sorted by (first appearance of reg, iteration)."""
    if not isinstance(index, list) or not index:
        raise ArtifactError(f"{where}: expected a non-empty JSON list of {{{', '.join(INDEX_KEYS)}}} objects")
    rows, seen, order = [], set(), {}
    for n, entry in enumerate(index):
        if not isinstance(entry, dict) or not {"reg", "iteration", "metrics"} <= set(entry):
            raise ArtifactError(f"{where}: item {n} needs at least 'reg', 'iteration' and 'metrics'")
        unknown = set(entry) - set(INDEX_KEYS)
        if unknown:
            raise ArtifactError(f"{where}: item {n} has unknown key(s) {sorted(unknown)}")
        reg, it = str(entry["reg"]), entry["iteration"]
        if isinstance(it, bool) or not isinstance(it, int):
            raise ArtifactError(f"{where}: item {n}: 'iteration' must be an integer")
        if (reg, it) in seen:
            raise ArtifactError(f"{where}: ({reg!r}, iteration {it}) appears twice")
        seen.add((reg, it))
        order.setdefault(reg, len(order))
        m = read_json(entry["metrics"])
        missing = [k for k in METRIC_KEYS if not isinstance(m, dict) or k not in m]
        if missing:
            raise ArtifactError(f"{entry['metrics']}: lacks {missing} (write it with rspo metrics --out)")
        row: dict[str, Any] = {
            "reg": reg,
            "iteration": it,
            "lc_win_rate": m["length_controlled_winrate"],
            "lc_standard_error": m.get("lc_standard_error"),
            "lc_method": m["lc_method"],
            "win_rate": m["win_rate"],
            "standard_error": m.get("standard_error"),
            "avg_length": m["avg_length"],
            "judge": m.get("annotator"),
            "n": m["n_total"],
            "generator": m.get("generator"),
            "reference": m.get("reference"),
        }
        if entry.get("self_bleu"):
            sb = read_json(entry["self_bleu"])
            if not isinstance(sb, dict) or "self_bleu" not in sb:
                raise ArtifactError(f"{entry['self_bleu']}: lacks 'self_bleu' (write it with rspo self-bleu)")
            row["self_bleu"] = sb["self_bleu"]
        if entry.get("train_log"):
            row.update(train_stats(entry["train_log"]))
        if entry.get("pairs_stats"):
            row.update(pairs_stats(entry["pairs_stats"]))
        rows.append(row)
    rows.sort(key=lambda r: (order[r["reg"]], r["iteration"]))
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
    return BASE_COLUMNS + extra


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = columns(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in cols})


def wide_table(rows: list[dict[str, Any]]) -> str:
    """Rows = regularizers; column groups LC WR / WR / length, one column per iteration (the paper's layout)."""
    regs = list(dict.fromkeys(r["reg"] for r in rows))
    its = sorted({r["iteration"] for r in rows})
    cell = {(r["reg"], r["iteration"]): r for r in rows}
    header = ["regularizer"]
    for label in ("LC WR", "WR", "len"):
        header += [f"{label} it{t}" for t in its]
    body = []
    for reg in regs:
        line = [reg]
        for key, digits in (("lc_win_rate", 2), ("win_rate", 2), ("avg_length", 0)):
            line += [_fmt(cell.get((reg, t), {}).get(key), digits) for t in its]
        body.append(line)
    return _md_table(header, body)


def _judges(rows) -> str:
    return ", ".join(sorted({str(r["judge"]) for r in rows if r.get("judge")})) or "unknown"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("reg", 0), ("iteration", 0), ("lc_win_rate", 2), ("lc_standard_error", 2), ("lc_method", 0),
        ("win_rate", 2), ("standard_error", 2), ("avg_length", 0), ("self_bleu", 4), ("judge", 0), ("n", 0),
    ]
    train_cols = [c for c in columns(rows) if c.startswith(("train_", "pairs_")) and any(c in r for r in rows)]
    header = [c for c, _ in cols] + train_cols
    body = [[_fmt(r.get(c), d) for c, d in cols] + [_fmt(r.get(c), 4) for c in train_cols] for r in rows]
    methods = ", ".join(sorted({str(r["lc_method"]) for r in rows}))
    return (
        "# RSPO evaluation summary\n\n"
        f"Judge: {_judges(rows)}. LC method: {methods} (see docs/evaluation.md; `approx_*` methods are offline "
        "approximations of AlpacaEval's length-controlled win rate). Win rates in percent against the reference; "
        "length = mean characters of the evaluated outputs.\n\n"
        "## Iterations side by side\n\n" + wide_table(rows) + "\n\n"
        "## All metrics per iterate\n\n" + _md_table(header, body) + "\n"
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """LC WR, WR and length per iteration, one line per regularizer (like the paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("lc_win_rate", "LC win rate (%)"), ("win_rate", "win rate (%)"), ("avg_length", "avg length (chars)"))
    for reg in dict.fromkeys(r["reg"] for r in rows):
        pts = sorted((r["iteration"], r) for r in rows if r["reg"] == reg)
        for ax, (key, _) in zip(axes, panels):
            xs = [t for t, r in pts if r.get(key) is not None]
            ax.plot(xs, [r[key] for t, r in pts if r.get(key) is not None], marker="o", label=reg)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.set_xticks(sorted({r["iteration"] for r in rows}))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"judge: {_judges(rows)}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def paper_comparison(rows: list[dict[str, Any]], paper: dict[str, Any] | None = None) -> str:
    """Markdown: the paper's table (iterations 0-3) beside ours, per regularizer, with the judge caveat."""
    paper = paper or load_paper_results()
    ours = {(r["reg"], r["iteration"]): r for r in rows}
    base = paper["iteration_0"]
    n_paper = len(paper["methods"][0]["lc_win_rate"])
    its = sorted({r["iteration"] for r in rows} | set(range(n_paper + 1)))
    keys = (("lc_win_rate", 2), ("win_rate", 2), ("avg_length", 0))
    header = ["method", "source"] + [f"{label} it{t}" for label in ("LC", "WR", "len") for t in its]
    header.append("Δ LC (last − it0)")

    def our_line(label: str, reg: str) -> list[str]:
        line = [label, "ours"]
        for key, d in keys:
            line += [_fmt(ours.get((reg, t), {}).get(key), d) for t in its]
        got = [t for t in its if ours.get((reg, t), {}).get("lc_win_rate") is not None]
        delta = ours[(reg, got[-1])]["lc_win_rate"] - ours[(reg, got[0])]["lc_win_rate"] if len(got) > 1 else None
        return line + [_fmt(delta)]

    body = []
    for m in paper["methods"]:
        series = {k: {0: base[k], **{i + 1: v for i, v in enumerate(m[k])}} for k, _ in keys}
        line = [m["method"], "paper"]
        for key, d in keys:
            line += [_fmt(None if series[key].get(t) is None else float(series[key][t]), d) for t in its]
        lc = {t: v for t, v in series["lc_win_rate"].items() if v is not None}  # the paper may omit iterations
        body.append(line + [_fmt(lc[max(lc)] - lc[0])])
        if any(r == m["reg"] for r, _ in ours):
            body.append(our_line(f"{m['method']} [reg `{m['reg']}`]", m["reg"]))
    unmatched = sorted({r for r, _ in ours} - {m["reg"] for m in paper["methods"]})
    body += [our_line(f"[reg `{reg}`]", reg) for reg in unmatched]
    refs = ", ".join(sorted({str(r.get("reference")) for r in rows if r.get("reference")})) or "unknown"
    methods = ", ".join(sorted({str(r["lc_method"]) for r in rows}))
    return (
        "# Our results beside the paper's (RSPO, arXiv 2503.00030, §2.4)\n\n"
        f"**Paper:** {paper['base_model']}, {paper['benchmark']}; judge {paper['judge']}. "
        "Iteration 0 = the base model's leaderboard entry. Sources: "
        + " ".join(paper["sources"]) + "\n\n"
        f"**Ours:** judge **{_judges(rows)}**; reference outputs from **{refs}**; LC method **{methods}**.\n\n"
        "**Caveat:** numbers from another judge, another reference, another base model or another prompt set "
        "are not comparable to the paper's GPT-4-turbo numbers in absolute terms; compare trends (the change "
        "over iterations, the ordering of regularizers, the length drift). With pi_0's outputs as the reference, "
        "iteration 0 is 50 % by construction. `approx_*` LC methods are offline approximations "
        "(docs/evaluation.md gives their measured error).\n\n"
        + _md_table(header, body) + "\n\n"
        "Paper notes: " + " ".join(paper["notes"]) + "\n"
    )


def summarize(index: list[dict[str, Any]], out_dir: str | Path, where: str = "index",
              base_model: str | None = None) -> list[dict[str, Any]]:
    """Write every output of ``rspo summarize`` into ``out_dir``; returns the summary rows.
    ``base_model`` (the run's policy) picks the paper's table (:func:`load_paper_results`)."""
    out_dir = Path(out_dir)
    rows = collect(index, where)
    write_csv(rows, out_dir / "summary.csv")
    write_text(out_dir / "summary.md", summary_markdown(rows))
    plot(rows, out_dir / "plots" / "winrate.png")
    write_text(out_dir / "paper_comparison.md", paper_comparison(rows, load_paper_results(base_model)))
    return rows
