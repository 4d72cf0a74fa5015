"""Tables, plot and files of a behavioural evaluation (:mod:`study.evaluate`).

Outputs in ``--out``:

``predictions.parquet``
    One row per query: ``id``, ``task``, ``relation``, ``axis``, ``protocol``, ``order``
    (``lr``/``rl`` for two-option, ``p<k>`` for the k-th prompt, empty for captions), ``prompt``,
    ``options``, ``scores`` (per option: caption log-likelihood or next-token log-prob),
    ``prediction``, ``answer``, ``correct``, ``p_answer`` (the answer's probability among the
    options), ``top1`` (raw top-1 next token; not for captions), ``top1_in_options`` (two-option:
    the top-1 token is one of the options), ``option_tokens`` (caption: tokens per option), ``item_correct`` (every query of the
    item correct: the strict score for two-option), ``scene_id``, ``split``, ``source_path``,
    one ``factor_<name>`` column per scalar scene factor and ``factors`` (all, as JSON).
``summary.csv``
    Item accuracy with a 95% Wilson interval by ``all``, ``task``, ``relation``, ``axis``,
    ``prompt_kind`` and ``degradation`` (when they vary) and each low-cardinality scene
    factor; ``macro`` rows: What'sUp's Table 1 macro-averages, within Controlled A+B, COCO
    one+two and GQA (VG) one+two, each when both of its subsets ran; ``task_mean``: the plain
    mean over whatever subsets ran (not the original's headline); What'sUp Controlled subsets add ``pair_acc`` and ``set_acc`` rows
    (original definitions).
``summary.png``
    The same as bar charts. ``metrics.json``: protocol-specific numbers (pair/set counts,
    two-option outcomes golden / fail_lr_only / fail_rl_only / fail_both, and the paper's
    "clean" set: strict accuracy over items whose top-1 token is an option in both orders;
    caption: accuracy with length-normalised (per-token) log-likelihoods, a diagnostic of the
    summed score's preference for short captions).
    ``config.json``: the resolved run config (written last).
``golden.txt``
    The golden items: the ids of the items answered right (``item_correct``: every query of the
    item right, so both orders for two-option), sorted, one per line, nothing else (empty when
    no item is right). The paper trains E7's directions on these items only; the file is what
    ``spatialbind probe --recipe paper --label side --export-directions DIR --golden FILE``
    takes as is.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .whatsup_metrics import pair_set_accuracy, wilson_interval

_SKIP_FACTORS = {"source", "original_file", "subject", "reference", "image_id", "coco", "subset"}
#: What'sUp Table 1 macro-averages: within these subset pairs (``amitakamath/whatsup_vlms``).
MACRO_FAMILIES = {
    "Controlled (A+B)": ("Controlled_Images_A", "Controlled_Images_B"),
    "COCO (one+two)": ("COCO_QA_one_obj", "COCO_QA_two_obj"),
    "GQA (one+two)": ("VG_QA_one_obj", "VG_QA_two_obj"),
}
OUTPUT_FILES = ("predictions.parquet", "summary.csv", "summary.png", "metrics.json",
                "golden.txt", "config.json")


def prediction_table(items, queries, results, protocol: str):
    """One row per query (see module docstring) as a pandas DataFrame."""
    import pandas as pd

    rows = []
    for q, r in zip(queries, results):
        s = items[q.item].stimulus
        f = dict(s.factors or {})
        row = {"id": s.id, "task": s.task, "prompt_kind": q.prompt_kind,
               "generator": s.generator,
               "relation": s.relation,
               "axis": s.axis, "protocol": protocol, "order": q.order, "prompt": q.prompt,
               "system": q.system, "options": list(q.options), "scores": r["scores"],
               "prediction": r["prediction"], "answer": q.answer, "correct": r["correct"],
               "p_answer": r["p_answer"], "top1": r["top1"],
               "top1_in_options": r.get("top1_in_options"),
               "option_tokens": r.get("option_tokens"), "tie": bool(r.get("tie", False)),
               "scene_id": s.scene_id,
               "split": s.split, "source_path": items[q.item].source_path,
               "degradation": (s.degradation or {}).get("kind", "none"),
               "factors": json.dumps(f, sort_keys=True, default=str)}
        for k, v in f.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                row[f"factor_{k}"] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["item_correct"] = df.groupby("id")["correct"].transform("all")
    return df


def _row(group: str, value, sub) -> dict[str, Any]:
    items = sub.drop_duplicates("id")
    n, k = len(items), int(items["item_correct"].sum())
    lo, hi = wilson_interval(k, n)
    return {"group": group, "value": str(value), "n_items": n, "n_correct": k,
            "accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "query_accuracy": float(sub["correct"].mean()) if len(sub) else float("nan"),
            "mean_p_answer": float(np.nanmean(sub["p_answer"])) if sub["p_answer"].notna().any()
            else float("nan")}


def summarise(df, items: Sequence, protocol: str):
    """Accuracy by group (``summary.csv``) and protocol-specific extras (``metrics.json``)."""
    import pandas as pd

    rows = [_row("all", "all", df)]
    n_items = df["id"].nunique()
    by_task = df.drop_duplicates("id").groupby("task")["item_correct"].mean()
    # What'sUp's Table 1 macro-averages within each pair of subsets; only those are "macro"
    for name, pair in MACRO_FAMILIES.items():
        if all(t in by_task.index for t in pair):
            sub = df[df["task"].isin(pair)].drop_duplicates("id")
            rows.append({"group": "macro", "value": name, "n_items": len(sub),
                         "n_correct": int(sub["item_correct"].sum()),
                         "accuracy": float(by_task[list(pair)].mean()),
                         "ci_low": float("nan"), "ci_high": float("nan"),
                         "query_accuracy": float("nan"), "mean_p_answer": float("nan")})
    if df["task"].nunique() > 1:  # a plain mean over whatever subsets ran: not the headline
        rows.append({"group": "task_mean", "value": "mean over the tasks that ran (not the "
                     "original macro)", "n_items": n_items,
                     "n_correct": int(df.drop_duplicates("id")["item_correct"].sum()),
                     "accuracy": float(by_task.mean()), "ci_low": float("nan"),
                     "ci_high": float("nan"), "query_accuracy": float("nan"),
                     "mean_p_answer": float("nan")})
    for col in ("task", "relation", "axis", "prompt_kind", "degradation"):
        if col in ("prompt_kind", "degradation") and df[col].nunique() < 2:
            continue
        for v, sub in df.groupby(col, dropna=False, sort=True):
            rows.append(_row(col, v, sub))
    for col in sorted(c for c in df.columns if c.startswith("factor_")):
        name = col[len("factor_"):]
        per_item = df.drop_duplicates("id")[col]
        nu = per_item.nunique(dropna=False)
        if name in _SKIP_FACTORS or nu < 2 or nu > 20 or nu >= n_items:
            continue
        for v, sub in df.groupby(col, dropna=False, sort=True):
            rows.append(_row(name, v, sub))
    extra: dict[str, Any] = {"protocol": protocol, "n_items": int(n_items),
                             "n_queries": int(len(df))}
    if "tie" in df and protocol == "caption":  # decided by np.argmax's first index
        ties = df[df["tie"].astype(bool)]
        extra["n_exact_ties"] = int(len(ties))
        extra["n_exact_ties_counted_right"] = int(ties["correct"].sum())
    per_item = df.drop_duplicates("id")
    for task, sub in per_item.groupby("task", sort=True):
        if task in ("Controlled_Images_A", "Controlled_Images_B"):
            m = pair_set_accuracy(list(sub["source_path"]), list(sub["item_correct"]), task)
            extra[f"{task}_pair_set"] = m
            for g, k, den in (("pair_acc", m["pair_correct"], m["n"] / 2),
                              ("set_acc", m["set_correct"], m["n"] / 4)):
                rows.append({"group": g, "value": task, "n_items": den, "n_correct": k,
                             "accuracy": m[g] / 100, "ci_low": float("nan"),
                             "ci_high": float("nan"), "query_accuracy": float("nan"),
                             "mean_p_answer": float("nan")})
    if protocol == "caption" and df["option_tokens"].notna().all() and len(df):
        # summed log-likelihood favours short captions; report the per-token variant beside it
        norm = [int(np.argmax(np.asarray(sc) / np.maximum(np.asarray(nt), 1)))
                for sc, nt in zip(df["scores"], df["option_tokens"])]
        ok = [list(o)[k] == a for o, k, a in zip(df["options"], norm, df["answer"])]
        extra["length_normalised"] = {"query_accuracy": float(np.mean(ok)),
                                      "agrees_with_sum": float(np.mean(
                                          np.asarray(ok) == df["correct"].to_numpy()))}
    if protocol == "two-option":
        piv = df.pivot_table(index="id", columns="order", values="correct", aggfunc="first")
        lr, rl = piv.get("lr"), piv.get("rl")
        if lr is not None and rl is not None:
            lr, rl = lr.astype(bool), rl.astype(bool)
            extra["two_option_outcomes"] = {
                "golden": int((lr & rl).sum()), "fail_lr_only": int((~lr & rl).sum()),
                "fail_rl_only": int((lr & ~rl).sum()), "fail_both": int((~lr & ~rl).sum())}
        # the paper's "clean" set: items whose top-1 token is one of the two options in every order
        if df["top1_in_options"].notna().all():
            clean = df.groupby("id")["top1_in_options"].all()
            strict = df.groupby("id")["correct"].all()
            n_clean = int(clean.sum())
            extra["clean"] = {"n_items": n_clean,
                              "strict_correct": int((strict & clean).sum()),
                              "strict_accuracy": float((strict & clean).sum() / n_clean)
                              if n_clean else float("nan")}
    return pd.DataFrame(rows), extra


def format_table(summary) -> str:
    """The summary as an aligned text table (what the CLI prints)."""
    lines = [f"{'group':<16} {'value':<24} {'n':>6} {'acc':>7} {'95% CI':>15} {'p(ans)':>7}"]
    for r in summary.itertuples(index=False):
        ci = ("" if np.isnan(r.ci_low) else f"[{r.ci_low:.3f},{r.ci_high:.3f}]")
        pa = "" if np.isnan(r.mean_p_answer) else f"{r.mean_p_answer:.3f}"
        n = f"{r.n_items:g}"
        lines.append(f"{r.group[:16]:<16} {str(r.value)[:24]:<24} {n:>6} {r.accuracy:>7.3f} "
                     f"{ci:>15} {pa:>7}")
    return "\n".join(lines)


def plot_summary(summary, path: Path, title: str = "") -> None:
    """Bar charts of accuracy (with 95% intervals) per group; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in dict.fromkeys(summary["group"]) if g != "all"]
    groups = groups[:8] or ["all"]
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 1.2 + 0.35 * len(summary) + 0.6 *
                                                      len(groups)), squeeze=False)
    overall = summary[summary["group"] == "all"]["accuracy"]
    for ax, g in zip(axes[:, 0], groups):
        sub = summary[summary["group"] == g]
        y = np.arange(len(sub))
        acc = sub["accuracy"].to_numpy(float)
        # clipped: at accuracy 1.0 the Wilson bound can sit a rounding error below it
        err = np.clip(np.vstack([np.nan_to_num(acc - sub["ci_low"].to_numpy(float)),
                                 np.nan_to_num(sub["ci_high"].to_numpy(float) - acc)]), 0, None)
        ax.barh(y, acc, xerr=err, color="#4C72B0", ecolor="#333333", capsize=2)
        ax.set_yticks(y, [f"{v} (n={n:g})" for v, n in zip(sub["value"], sub["n_items"])],
                      fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(g, fontsize=9, loc="left")
        if len(overall):
            ax.axvline(float(overall.iloc[0]), color="#C44E52", ls="--", lw=1)
    axes[-1, 0].set_xlabel("accuracy (dashed: overall)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic(path, buf.getvalue())


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_output(out: Path, config) -> None:
    """Refuse an ``out`` folder that holds other files or another run's results.

    Rerunning the same config into the same folder replaces its outputs; anything else stops
    before the model is loaded, so nothing already written is touched.
    """
    from dataclasses import asdict

    from interventions.errors import EvaluationError

    if out.exists() and not out.is_dir():
        raise EvaluationError(f"out={str(out)!r} is a file; pass a folder")
    from common.io import check_writable

    check_writable(out, what="--out", error=EvaluationError)  # read-only: before the model loads
    if not out.exists() or not any(out.iterdir()):
        return
    cfg = out / "config.json"
    if cfg.exists():
        try:
            old = json.loads(cfg.read_text()).get("run")
        except (ValueError, AttributeError):
            old = None
        if old is None:
            raise EvaluationError(f"out={str(out)!r} holds a config.json that is not an "
                                  "evaluation's (a dataset or another tool's output?); choose a "
                                  "new folder")
        if old == json.loads(json.dumps(asdict(config))):
            return
        raise EvaluationError(f"out={str(out)!r} holds the results of a different evaluation "
                              "(see its config.json); choose a new folder or delete that one")
    others = [p.name for p in out.iterdir() if p.name not in OUTPUT_FILES]
    if others:
        raise EvaluationError(f"out={str(out)!r} is not empty and holds no evaluation "
                              f"({others[0]}, ...); choose an empty or new folder")


def write_report(out: Path, preds, summary, extra: dict, run: dict, resolved: dict) -> None:
    """Write every output file of a run into ``out`` (``config.json`` last).

    ``run`` is the :class:`EvalConfig` as given (compared on reruns), ``resolved`` what it
    resolved to (protocol, template, counts, adapter).
    """
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    preds.to_parquet(buf, index=False)
    _atomic(out / "predictions.parquet", buf.getvalue())
    _atomic(out / "summary.csv", summary.to_csv(index=False).encode())
    _atomic(out / "metrics.json", (json.dumps(extra, indent=2, default=float) + "\n").encode())
    _atomic(out / "golden.txt", golden_text(preds).encode())
    plot_summary(summary, out / "summary.png",
                 f"{run.get('model')} · {resolved.get('protocol')} · {run.get('data')}")
    meta = {"run": run, "resolved": resolved, "toolkit_version": _version()}
    _atomic(out / "config.json", (json.dumps(meta, indent=2, default=str) + "\n").encode())


def golden_ids(preds) -> list[str]:
    """Sorted ids of the items answered right (``item_correct``), the paper's golden items."""
    if len(preds) == 0 or "item_correct" not in preds:
        return []
    right = preds.loc[preds["item_correct"].astype(bool), "id"]
    return sorted(set(map(str, right)))


def golden_text(preds) -> str:
    """``golden.txt``: :func:`golden_ids`, one per line."""
    ids = golden_ids(preds)
    return "".join(f"{i}\n" for i in ids)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("spatialbind")
    except Exception:  # noqa: BLE001 - source tree without install
        return "0+unknown"
