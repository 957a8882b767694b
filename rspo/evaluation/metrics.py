"""AlpacaEval metrics of one annotations file, with alpaca_eval's own functions.

* ``win_rate``, ``standard_error``, ``n_total`` (and ``n_wins``, ``n_wins_base``, ``n_draws``,
  ``discrete_win_rate``): ``alpaca_eval.metrics.get_winrate`` (= 100 * mean(preference - 1), its sem).
* ``avg_length``: ``int(mean(len(output_2)))`` in characters, the leaderboard's definition
  (``alpaca_eval.main.evaluate`` computes it from the model outputs, which are ``output_2``).
* ``length_controlled_winrate`` / ``lc_standard_error``, by ``lc_method``:

  - ``length_controlled_v1`` (official, AlpacaEval 2.0): ``alpaca_eval.metrics.glm_winrate.
    get_length_controlled_winrate`` with the hub file ``df_gamed.csv`` given as a local path (its
    ``hf_hub_download`` is pointed at that path while it runs, so nothing is downloaded) and
    ``save_weights_dir=None`` (never write into site-packages). Needs the 805 AlpacaEval
    annotations in canonical order (instruction difficulty is looked up by row position).
  - ``approx_fixed_length_slope`` (offline default): the same GLM with the length slope FIXED to the
    median official slope and no instruction difficulty:
    ``logit P(model wins | x) = PHI0 * tanh(delta_x / sd(delta)) + theta`` with
    ``delta_x = len(output_1) - len(output_2)`` (characters), ``theta`` fitted by soft-label maximum
    likelihood, ``LC = 100 * sigmoid(theta)`` (delta = 0) and ``lc_standard_error`` = 100 *
    sigmoid'(theta) * the sandwich standard error of theta. Error against the official LC: docs/evaluation.md.
  - ``approx_length_controlled_minimal``: alpaca_eval's own ``length_controlled_minimal`` GLM (slope
    and bias fitted per model, L1 + 5-fold CV), with a zero instruction-difficulty table. Unstable for
    models much shorter or longer than the reference (measured in docs/evaluation.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rspo.artifacts import ArtifactError, read_json_objects
from rspo.errors import RSPOError
from rspo.evaluation.alpaca_judges import import_alpaca_eval

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

OFFICIAL_LC = "length_controlled_v1"
APPROX_FIXED_SLOPE = "approx_fixed_length_slope"
APPROX_MINIMAL = "approx_length_controlled_minimal"
LC_METHODS = ("auto", OFFICIAL_LC, APPROX_FIXED_SLOPE, APPROX_MINIMAL)

#: Median of the length coefficient (``np.tanh(std_delta_len)``) over the 183 non-baseline models of
#: alpaca_eval's official AE2 GLM weights (GitHub tatsu-lab/alpaca_eval,
#: src/alpaca_eval/metrics/weights/weighted_alpaca_eval_gpt4_turbo/length_controlled_v1/
#: baseline_gpt4_1106_preview.csv; quartiles -1.80 / -1.54 / -1.33). Negative: a model shorter than
#: the reference (delta > 0) loses more often.
FIXED_LENGTH_SLOPE = -1.543445

REQUIRED_COLUMNS = ("preference", "output_1", "output_2", "generator_1", "generator_2")
DF_GAMED_COLUMNS = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")


# --------------------------------------------------------------------------- input


def load_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate an alpaca_eval annotations JSON; every problem is one ArtifactError naming the file."""
    data = read_json_objects(path, "annotation")
    for n, row in enumerate(data):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ArtifactError(f"{path}: item {n} lacks column(s) {missing} (needs {list(REQUIRED_COLUMNS)})")
        for c in ("output_1", "output_2", "generator_1", "generator_2"):
            if not isinstance(row[c], str):
                raise ArtifactError(f"{path}: item {n}: {c!r} is {type(row[c]).__name__}, expected a string")
        p = row["preference"]
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | float)):
            raise ArtifactError(f"{path}: item {n}: 'preference' is {p!r}, expected a number in [1, 2] or null")
    for c in ("generator_1", "generator_2"):
        names = sorted({row[c] for row in data})
        if len(names) != 1:
            raise ArtifactError(f"{path}: {c!r} has {len(names)} values {names[:5]}; expected one model per file")
    return data


def _preferences(rows: list[dict[str, Any]]) -> np.ndarray:
    """Preferences as floats: 0 (legacy tie) -> 1.5; null and values outside [1, 2] -> NaN."""
    import numpy as np

    pref = np.array([math.nan if r["preference"] is None else float(r["preference"]) for r in rows])
    pref[pref == 0] = 1.5
    bad = np.isfinite(pref) & ((pref < 1) | (pref > 2))
    if bad.any():
        log.warning("%d preference(s) outside [1, 2] treated as missing", int(bad.sum()))
        pref[bad] = math.nan
    return pref


# --------------------------------------------------------------------------- LC variants


def fixed_slope_lc(
    preference: np.ndarray, len_reference: np.ndarray, len_model: np.ndarray, slope: float = FIXED_LENGTH_SLOPE
) -> tuple[float, float]:
    """(LC, its standard error) in percent; see the module docstring. NaN preferences are left out of the fit."""
    import numpy as np
    from scipy.optimize import brentq

    delta = np.asarray(len_reference, dtype=float) - np.asarray(len_model, dtype=float)
    sd = delta.std(ddof=1) if len(delta) > 1 else 0.0
    t = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    ok = np.isfinite(preference)
    if not ok.any():
        return math.nan, math.nan
    y, t = np.asarray(preference)[ok] - 1.0, t[ok]

    def sigmoid(z):
        return np.exp(-np.logaddexp(0.0, -z))

    def score(theta):  # d loglik / d theta, decreasing in theta
        return float(np.sum(y - sigmoid(slope * t + theta)))

    lo, hi = -40.0, 40.0
    theta = lo if score(lo) <= 0 else hi if score(hi) >= 0 else brentq(score, lo, hi, xtol=1e-12)
    p = sigmoid(slope * t + theta)
    info = float(np.sum(p * (1 - p)))
    var_theta = float(np.sum((y - p) ** 2)) / info**2 if info > 0 else math.nan
    lc = float(sigmoid(theta))
    return 100 * lc, 100 * lc * (1 - lc) * math.sqrt(var_theta)


@contextlib.contextmanager
def _local_df_gamed(path: Path):
    """Point alpaca_eval's ``hf_hub_download`` (used only for df_gamed.csv) at a local file."""
    import alpaca_eval.metrics.glm_winrate as glm

    original = glm.hf_hub_download
    glm.hf_hub_download = lambda *args, **kwargs: str(path)
    try:
        yield glm
    finally:
        glm.hf_hub_download = original


def check_df_gamed(path: str | Path, n_rows: int, where: str) -> Path:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: df_gamed file not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is one line
        raise ArtifactError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in DF_GAMED_COLUMNS if c not in df.columns]
    if missing:
        raise ArtifactError(f"{path}: lacks column(s) {missing} (alpaca_eval's df_gamed.csv has {list(DF_GAMED_COLUMNS)})")
    n_index = df["index"].nunique()
    if n_rows != n_index:
        raise ArtifactError(
            f"{where}: {n_rows} annotations, but the official LC ({OFFICIAL_LC}) needs all {n_index} AlpacaEval "
            f"instructions in canonical order (difficulty is looked up by row); use lc_method {APPROX_FIXED_SLOPE}"
        )
    return path


def _library_lc(df, glm_name: str, df_gamed: Path) -> tuple[float, float]:
    with warnings.catch_warnings(), _local_df_gamed(df_gamed) as glm:
        warnings.simplefilter("ignore")  # sklearn FutureWarnings of the library's LogisticRegressionCV
        out = glm.get_length_controlled_winrate(df, glm_name=glm_name, save_weights_dir=None)
    return float(out["length_controlled_winrate"]), float(out["lc_standard_error"])


# --------------------------------------------------------------------------- all metrics


def compute_metrics(
    rows: list[dict[str, Any]],
    df_gamed: str | Path | None = None,
    lc_method: str = "auto",
    where: str = "annotations",
) -> dict[str, Any]:
    """The metrics mapping of validated annotation rows (see :func:`load_annotations`)."""
    if lc_method not in LC_METHODS:
        raise RSPOError(f"unknown lc_method {lc_method!r}; choose one of {LC_METHODS}")
    if lc_method == "auto":
        lc_method = OFFICIAL_LC if df_gamed else APPROX_FIXED_SLOPE
    if lc_method == OFFICIAL_LC and not df_gamed:
        raise RSPOError(f"lc_method {OFFICIAL_LC} needs --df-gamed (alpaca_eval's df_gamed.csv from the hub)")
    if lc_method == OFFICIAL_LC:  # check the file before the (slow) alpaca_eval import
        df_gamed = check_df_gamed(df_gamed, len(rows), where)
    import_alpaca_eval()
    import pandas as pd
    from alpaca_eval.metrics import get_winrate

    pref = _preferences(rows)
    df = pd.DataFrame(
        {
            "preference": pref,
            "output_1": [r["output_1"] for r in rows],
            "output_2": [r["output_2"] for r in rows],
            "generator_1": [r["generator_1"] for r in rows],
            "generator_2": [r["generator_2"] for r in rows],
        }
    )
    wr = get_winrate(df)
    len_ref = df["output_1"].str.len().to_numpy(dtype=float)
    len_model = df["output_2"].str.len().to_numpy(dtype=float)

    if lc_method == OFFICIAL_LC:
        lc, lc_se = _library_lc(df, OFFICIAL_LC, df_gamed)
    elif lc_method == APPROX_MINIMAL:
        with tempfile.TemporaryDirectory() as tmp:
            zero = Path(tmp) / "df_gamed_zero_difficulty.csv"
            pd.DataFrame(
                {
                    "model": "none",
                    "index": range(len(df)),
                    "preference": math.nan,
                    "std_delta_len": 0.0,
                    "instruction_difficulty": 0.0,
                    "not_gamed_baseline": False,
                }
            ).to_csv(zero, index=False)
            lc, lc_se = _library_lc(df, "length_controlled_minimal", zero)
    else:
        lc, lc_se = fixed_slope_lc(pref, len_ref, len_model)

    annotators = sorted({str(r["annotator"]) for r in rows if r.get("annotator")})
    out = {
        "win_rate": float(wr["win_rate"]),
        "standard_error": float(wr["standard_error"]),
        "n_total": int(wr["n_total"]),
        "avg_length": int(len_model.mean()),
        "length_controlled_winrate": lc,
        "lc_standard_error": lc_se,
        "lc_method": lc_method,
        "n_wins": int(wr["n_wins"]),
        "n_wins_base": int(wr["n_wins_base"]),
        "n_draws": int(wr["n_draws"]),
        "discrete_win_rate": float(wr["discrete_win_rate"]),
        "generator": rows[0]["generator_2"],
        "reference": rows[0]["generator_1"],
        "annotator": ",".join(annotators) if annotators else None,
    }
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
