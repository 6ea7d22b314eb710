"""Readable agreement reports: HTML (with plots) and Markdown from a results dict.

The reader is a methods lead who must grasp the state of agreement in ten seconds,
so the report leads with the per-code table (precision and recall side by side,
kappa with its interval drawn as a bar, human-human and baseline next to it, codes
resting on too few passages greyed and flagged), then the overall figures, then
plots. Plots are matplotlib PNGs embedded as base64 (one self-contained file).
"""

from __future__ import annotations

import base64
import io
from typing import Any

from qualflow.evaluate import NO_HUMAN_BASELINE

MAX_TABLE_ROWS = 60
BAND_EDGES = (0.2, 0.4, 0.6, 0.8)
BAND_LABELS = ("poor", "fair", "moderate", "substantial", "almost perfect")
OVERALL_SHOWN = (
    ("pooled_kappa", "Pooled kappa"),
    ("macro_ac1", "Macro AC1"),
    ("micro_precision", "Micro precision"),
    ("micro_recall", "Micro recall"),
    ("micro_f1", "Micro F1"),
    ("macro_f1", "Macro F1"),
    ("macro_kappa", "Macro kappa"),
    ("macro_alpha", "Macro alpha"),
    ("jaccard", "Jaccard (code sets)"),
    ("masi_alpha", "Alpha, MASI distance"),
    ("exact_match", "Exact match"),
)


# --------------------------------------------------------------------------- formatting


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_ci(est: dict[str, Any] | None, digits: int = 2) -> str:
    if not est or est.get("value") is None:
        return "undefined"
    if est.get("low") is None:
        return fmt(est["value"], digits)
    return f"{fmt(est['value'], digits)} [{fmt(est['low'], digits)}, {fmt(est['high'], digits)}]"


def band(x: float | None) -> str:
    """Landis & Koch style band of a kappa-like figure ('' when undefined)."""
    if x is None:
        return "none"
    for edge, label in zip(BAND_EDGES, BAND_LABELS, strict=False):
        if x < edge:
            return label.replace(" ", "-")
    return BAND_LABELS[-1].replace(" ", "-")


# --------------------------------------------------------------------------- view model


def code_rows(results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the per-code table (used codes), and the codes nobody used."""
    agreement = results["agreement"]
    hh = _by_code(results.get("human_baseline"), "codes", "kappa")
    base = _by_code((results.get("baseline") or {}).get("comparison"), "codes", "kappa")
    rows, unused = [], []
    for c in agreement["codes"]:
        if c["support"] == 0:
            unused.append(c["code"])
            continue
        b = base.get(c["code"])
        h = hh.get(c["code"])
        flags = []
        if c["few"]:
            flags.append("few")
        if c["positives_b"] == 0:
            flags.append("never proposed")
        if c["positives_a"] == 0:
            flags.append("not in reference")
        if not c["few"]:  # on a handful of passages a verdict is bootstrap noise
            if b and b["verdict"] == "worse":
                flags.append("regression")
            if b and b["verdict"] == "better":
                flags.append("improved")
            if h and h["reading"] == "inferior":
                flags.append("below humans")
        rows.append(
            {
                **c,
                "band": band(c["kappa"]["value"]),
                "human_kappa": h["human_human"] if h else None,
                "human_reading": h["reading"] if h else None,
                "baseline_kappa": b["baseline"] if b else None,
                "baseline_diff": b["diff"] if b else None,
                "baseline_verdict": b["verdict"] if b else None,
                "flags": flags,
            }
        )
    rows.sort(key=lambda r: (r["few"], -r["positives_a"], -r["support"], r["code"]))
    return rows, unused


def _by_code(section: dict[str, Any] | None, key: str, metric: str) -> dict[str, dict]:
    if not section:
        return {}
    return {r["subject"]: r for r in section.get(key, []) if r.get("metric") == metric}


def share(x: float | None) -> str:
    """A share as a percentage ('–' when undefined)."""
    if x is None:
        return "–"
    text = f"{100 * x:.1f}".removesuffix(".0")
    return f"{text}%"


def coverage_text(results: dict[str, Any]) -> str:
    """'coverage 1% (1 of 100 passages answered; 99 unanswered counted as no code)'."""
    c = results.get("coverage") or {}
    if not c:
        return ""
    text = f"coverage {share(c['share'])} ({c['answered']} of {c['reference_units']} answered"
    missing = c["reference_units"] - c["answered"]
    if missing:
        text += f"; {missing} unanswered counted as no code"
    return text + ")"


def header_warnings(results: dict[str, Any]) -> list[str]:
    """Warnings that belong at the top of every rendering (an allowed train/test overlap)."""
    return list(results.get("warnings") or [])


def learned_lines(results: dict[str, Any]) -> list[str]:
    """What the compared coder learned from (one line per distinct provenance)."""
    training = results.get("training") or {}
    return list(training.get("coder_lines") or ["not recorded in these results"])


def human_note(results: dict[str, Any]) -> str:
    return (results.get("scope") or {}).get("human_baseline") or ""


def headline(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Up to five lines over the table (HTML-safe; bold marks the key figures):
    per-code state with the coverage, F1 at the three levels, machine vs humans (or
    that there is no human baseline), run vs baseline."""
    from markupsafe import escape

    a = results["agreement"]
    solid = [r for r in rows if not r["few"]]
    good = [r for r in solid if (r["kappa"]["value"] or -1) >= 0.6]
    poor = [r for r in solid if r["kappa"]["value"] is not None and r["kappa"]["value"] < 0.4]
    pooled_all = a["overall"]["pooled_kappa"]
    cover = coverage_text(results)
    lines = [
        f"{escape(a['coder_b'])} vs {escape(a['coder_a'])}, {a['n_passages']} passages, "
        f"<b>{escape(cover) or 'coverage not recorded'}</b>: micro F1 "
        f"<b>{fmt_ci(a['overall']['micro_f1'])}</b>, "
        f"pooled kappa <b>{fmt_ci(pooled_all)}</b>; kappa ≥ 0.6 on <b>{len(good)}</b> and "
        f"&lt; 0.4 on <b>{len(poor)}</b> of {len(solid)} codes with enough passages"
        + (
            f"; {len(rows) - len(solid)} more codes rest on too few passages."
            if len(rows) > len(solid)
            else "."
        )
    ]
    levels = level_rows(results)
    if levels:
        lines.append(
            "Three levels (unanswered text = no code): "
            + ", ".join(f"{escape(r['label'])} F1 <b>{fmt(_value(r['f1']))}</b>" for r in levels)
            + "."
        )
    hb = results.get("human_baseline")
    if not hb:
        note = human_note(results) or NO_HUMAN_BASELINE
        lines.append(f"Human baseline: <b>{escape(note)}</b>.")
    if hb:
        pooled = next((r for r in hb["overall"] if r["metric"] == "pooled_kappa"), None)
        if pooled:
            lines.append(
                f"Versus humans ({hb['n_passages']} passages): pooled kappa "
                f"{fmt(pooled['machine_human']['value'])} machine-human vs "
                f"{fmt(pooled['human_human']['value'])} human-human, difference "
                f"{fmt_ci(pooled['difference'])}: <b>{pooled['reading']}</b> "
                f"at margin {hb['margin']}."
            )
    bl = results.get("baseline")
    if bl:
        cmp = bl["comparison"]
        worse = sorted(
            {d.split(":")[0] for d in cmp["regressions"] if d.split(":")[0] != "all codes"}
        )
        pooled = next((d for d in cmp["overall"] if d["metric"] == "pooled_kappa"), None)
        base_cover = bl.get("coverage") or {}
        if pooled:
            lines.append(
                f"Versus baseline {escape(bl['name'])}"
                + (f" (coverage {share(base_cover.get('share'))})" if base_cover else "")
                + ": pooled kappa "
                f"{fmt(pooled['baseline'])} → {fmt(pooled['run'])}, difference "
                f"{fmt_ci(pooled['diff'])} <b>{pooled['verdict']}</b>; "
                f"<b>{len(worse)}</b> code(s) regress."
            )
    return lines


def _plain(lines: list[str]) -> str:
    import re

    text = " ".join(lines).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"</?b>", "**", text)


def answered_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Overall figures over the answered passages only (empty when all were answered)."""
    section = results.get("answered_only") or {}
    pair = section.get("agreement")
    if not pair:
        return []
    return [
        {"label": label, "machine": fmt_ci(pair["overall"].get(key))}
        for key, label in OVERALL_SHOWN
    ]


def overall_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Overall figures: machine vs reference, human-human and baseline side by side."""
    o = results["agreement"]["overall"]
    hh = (results.get("human_agreement") or {}).get("overall", {})
    hb = {r["metric"]: r for r in (results.get("human_baseline") or {}).get("overall", [])}
    cmp = (results.get("baseline") or {}).get("comparison") or {}
    base = {d["metric"]: d for d in cmp.get("overall", [])}
    rows = []
    for key, label in OVERALL_SHOWN:
        b = base.get(key)
        rows.append(
            {
                "label": label,
                "machine": fmt_ci(o.get(key)),
                "band": band(o.get(key, {}).get("value")) if "kappa" in key or "ac1" in key else "",
                "human": fmt_ci(hh.get(key)) if hh else "",
                "reading": hb[key]["reading"] if key in hb else "",
                "baseline": fmt(b["baseline"]) if b else "",
                "diff": fmt_ci(b["diff"]) if b else "",
                "verdict": b["verdict"] if b else "",
            }
        )
    return rows


def category_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    cats = results["agreement"].get("categories")
    if not cats:
        return []
    return [
        {**c, "band": band(c["kappa"]["value"])}
        for c in sorted(cats["codes"], key=lambda c: c["code"])
        if c["support"] > 0
    ]


# --------------------------------------------------------------------------- three levels


LEVEL_LABELS = {
    "span_chars": "span, characters",
    "span_highlights": "span, highlights",
    "sentence": "sentence",
    "turn": "turn",
}


def _overall_metric(section: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    if not section:
        return None
    return (section.get("overall") or {}).get(metric)


def _reading(baseline: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    if not baseline:
        return None
    return next((r for r in baseline.get("overall", []) if r["metric"] == metric), None)


def _count(n: int | None, noun: str) -> str:
    if n is None:
        return "–"
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def level_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's figures at span, sentence and turn level, one row per level (and
    one per span reading), each with what it rests on, its coverage, the headline
    figures (unanswered text counted as no code), the answered-only F1 and the human
    baseline. Empty when the span and turn levels were not computed."""
    levels = results.get("levels") or {}
    if not levels.get("computed"):
        return []
    span, turn = levels["span"], levels["turn"]
    sentence_cover = (results.get("coverage") or {}).get("share")
    answered_sentence = (results.get("answered_only") or {}).get("agreement")
    span_codes = span["agreement"]["codes"]
    ref_spans = sum(c["spans_reference"] for c in span_codes)
    coder_spans = sum(c["spans_other"] for c in span_codes)
    share = levels.get("min_share")
    rows = []
    for key, prefix in (("span_chars", "micro_char_"), ("span_highlights", "micro_highlight_")):
        o = span["agreement"]["overall"]
        metric = f"{prefix}f1"
        rows.append(
            {
                "level": key,
                "label": LEVEL_LABELS[key]
                + (f" (share {share})" if key == "span_highlights" else ""),
                "rests_on": (
                    _count(span["scope_chars"], "character")
                    if key == "span_chars"
                    else f"{ref_spans:,} reference / {coder_spans:,} coder highlights"
                ),
                "coverage": span["coverage"].get("char_share"),
                "precision": o[f"{prefix}precision"],
                "recall": o[f"{prefix}recall"],
                "f1": o[metric],
                "kappa": None,
                "answered_f1": _overall_metric(span.get("answered_only"), metric),
                "human_f1": _overall_metric(span.get("human_agreement"), metric),
                "reading": _reading(span.get("human_baseline"), metric),
            }
        )
    for key, pair, cover, answered, human, baseline, noun in (
        (
            "sentence",
            results["agreement"],
            sentence_cover,
            answered_sentence,
            results.get("human_agreement"),
            results.get("human_baseline"),
            "sentence",
        ),
        (
            "turn",
            turn.get("agreement"),
            turn["coverage"].get("share"),
            turn.get("answered_only"),
            turn.get("human_agreement"),
            turn.get("human_baseline"),
            "turn",
        ),
    ):
        if not pair:
            continue
        o = pair["overall"]
        rows.append(
            {
                "level": key,
                "label": LEVEL_LABELS[key],
                "rests_on": _count(pair["n_passages"], noun),
                "coverage": cover,
                "precision": o["micro_precision"],
                "recall": o["micro_recall"],
                "f1": o["micro_f1"],
                "kappa": o["pooled_kappa"],
                "answered_f1": _overall_metric(answered, "micro_f1"),
                "human_f1": _overall_metric(human, "micro_f1"),
                "reading": _reading(baseline, "micro_f1"),
            }
        )
    return rows


def level_code_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per code, the three levels side by side (codes either coder used, in the order
    of the per-code table)."""
    levels = results.get("levels") or {}
    if not levels.get("computed"):
        return []
    span = {c["code"]: c for c in levels["span"]["agreement"]["codes"]}
    turn = {c["code"]: c for c in ((levels["turn"].get("agreement") or {}).get("codes") or [])}
    rows, _ = code_rows(results)
    order = [r["code"] for r in rows] + sorted(set(span) - {r["code"] for r in rows})
    sentence = {c["code"]: c for c in results["agreement"]["codes"]}
    out = []
    for code in order:
        s, sen, t = span.get(code), sentence.get(code), turn.get(code)
        if not (s and (s["chars_reference"] or s["chars_other"])) and not (sen and sen["support"]):
            continue
        out.append(
            {
                "code": code,
                "chars": f"{s['chars_reference']:,} / {s['chars_other']:,}" if s else "–",
                "highlights": f"{s['spans_reference']} / {s['spans_other']}" if s else "–",
                "char_precision": (s or {}).get("char_precision"),
                "char_recall": (s or {}).get("char_recall"),
                "char_f1": (s or {}).get("char_f1"),
                "highlight_f1": (s or {}).get("highlight_f1"),
                "sentence_f1": (sen or {}).get("f1"),
                "sentence_kappa": (sen or {}).get("kappa"),
                "turn_f1": (t or {}).get("f1"),
                "turn_kappa": (t or {}).get("kappa"),
                "few": bool(sen and sen["few"]),
            }
        )
    return out


def levels_note(results: dict[str, Any]) -> str:
    """Why a report has the sentence level only (empty when it has all three)."""
    levels = results.get("levels") or {}
    if levels.get("computed"):
        return ""
    return levels.get("reason") or "span and turn levels not computed"


def levels_markdown(results: dict[str, Any], max_rows: int = 30) -> list[str]:
    """The three-level tables of the Markdown summary."""
    rows = level_rows(results)
    if not rows:
        return [f"Span and turn levels: {levels_note(results)}."]
    levels = results["levels"]
    lines = [
        "Agreement at three levels (headline: text the coder did not answer counts as "
        "no code; micro figures, 95% CI):",
        "",
        "| level | rests on | coverage | precision | recall | F1 | pooled kappa "
        "| answered only: F1 | human-human F1 | machine vs humans |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['rests_on']} | {share(r['coverage'])} "
            f"| {fmt_ci(r['precision'])} | {fmt_ci(r['recall'])} | {fmt_ci(r['f1'])} "
            f"| {fmt_ci(r['kappa']) if r['kappa'] else '–'} "
            f"| {fmt_ci(r['answered_f1']) if r['answered_f1'] else 'same'} "
            f"| {fmt_ci(r['human_f1']) if r['human_f1'] else '–'} "
            f"| {reading_text(r['reading'])} |"
        )
    lines += ["", f"Resampled: {resampling_text(levels)}."]
    lines += [f"Note: {n}" for n in levels.get("notes") or []]
    code_lines = level_code_rows(results)
    if code_lines:
        lines += [
            "",
            "| code | characters ref / coder | highlights ref / coder | char precision "
            "| char recall | char F1 | highlight F1 | sentence F1 | sentence kappa "
            "| turn F1 | turn kappa |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in code_lines[:max_rows]:
            lines.append(
                f"| {c['code']} | {c['chars']} | {c['highlights']} "
                f"| {fmt(_value(c['char_precision']))} | {fmt(_value(c['char_recall']))} "
                f"| {fmt(_value(c['char_f1']))} | {fmt(_value(c['highlight_f1']))} "
                f"| {fmt(_value(c['sentence_f1']))} | {fmt(_value(c['sentence_kappa']))} "
                f"| {fmt(_value(c['turn_f1']))} | {fmt(_value(c['turn_kappa']))} |"
            )
        if len(code_lines) > max_rows:
            lines.append(f"| … {len(code_lines) - max_rows} more codes in the JSON results |")
    return lines


def _value(est: dict[str, Any] | None) -> float | None:
    return (est or {}).get("value")


def reading_text(reading: dict[str, Any] | None) -> str:
    """'0.55 vs 0.61, difference -0.06 [-0.12, 0.01]: inconclusive' (machine-human vs
    human-human), or '–' without a human baseline."""
    if not reading:
        return "–"
    return (
        f"{fmt(_value(reading['machine_human']))} vs {fmt(_value(reading['human_human']))}, "
        f"difference {fmt_ci(reading['difference'])}: {reading['reading']}"
    )


def resampling_text(levels: dict[str, Any]) -> str:
    r = levels.get("resampling") or {}
    return ", ".join(f"{level}: {what}" for level, what in r.items()) or "–"


# --------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_forest(rows: list[dict[str, Any]]) -> str | None:
    """Per-code kappa and AC1 with 95% intervals; human-human and baseline as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["kappa"]["value"] is not None][:30]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(shown) + 1.2))
    y = list(range(len(shown)))[::-1]
    for yi, r in zip(y, shown, strict=True):
        alpha = 0.35 if r["few"] else 1.0
        k, a = r["kappa"], r["ac1"]
        if k["low"] is not None:
            ax.plot([k["low"], k["high"]], [yi + 0.12] * 2, color="#1f5fa8", lw=2, alpha=alpha)
        ax.plot(k["value"], yi + 0.12, "o", color="#1f5fa8", alpha=alpha, ms=5)
        if a["value"] is not None:
            if a["low"] is not None:
                ax.plot([a["low"], a["high"]], [yi - 0.12] * 2, color="#d9822b", lw=2, alpha=alpha)
            ax.plot(a["value"], yi - 0.12, "s", color="#d9822b", alpha=alpha, ms=4)
        if r["human_kappa"] and r["human_kappa"]["value"] is not None:
            ax.plot(r["human_kappa"]["value"], yi, "|", color="black", ms=14, mew=2)
        if r["baseline_kappa"] is not None:
            ax.plot(r["baseline_kappa"], yi, "x", color="#777", ms=7)
    ax.set_yticks(y)
    ax.set_yticklabels([_short(r["code"]) + (" *" if r["few"] else "") for r in shown], fontsize=8)
    ax.axvline(0, color="#999", lw=0.8)
    for edge in BAND_EDGES:
        ax.axvline(edge, color="#ddd", lw=0.6, zorder=0)
    ax.set_xlim(-0.5, 1.02)
    ax.set_xlabel("agreement (● kappa, ■ AC1, 95% CI; | human-human kappa; × baseline kappa)")
    ax.set_title("Per-code agreement (* = too few passages)", fontsize=10)
    return _png(fig)


def plot_precision_recall(rows: list[dict[str, Any]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [
        r for r in rows if r["precision"]["value"] is not None and r["recall"]["value"] is not None
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    sizes = [20 + 6 * r["support"] ** 0.8 for r in pts]
    colors = ["#bbb" if r["few"] else "#1f5fa8" for r in pts]
    ax.scatter(
        [r["recall"]["value"] for r in pts],
        [r["precision"]["value"] for r in pts],
        s=sizes,
        c=colors,
        alpha=0.7,
        edgecolors="white",
    )
    for r in sorted(pts, key=lambda r: -r["support"])[:12]:
        ax.annotate(
            _short(r["code"], 22),
            (r["recall"]["value"], r["precision"]["value"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("recall (share of reference tags the coder found)")
    ax.set_ylabel("precision (share of coder tags the reference has)")
    ax.set_title("Precision and recall per code (size = passages)", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_cooccurrence(results: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    co = results.get("cooccurrence") or {}
    codes = co.get("codes") or []
    if len(codes) < 2:
        return None
    m = np.array(co["matrix"], dtype=float)
    row_sum = m.sum(axis=1, keepdims=True)
    share = np.divide(m, row_sum, out=np.zeros_like(m), where=row_sum > 0)
    n = len(codes)
    fig, ax = plt.subplots(figsize=(0.32 * n + 2.5, 0.32 * n + 1.8))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    labels = [_short(c, 20) for c in codes]
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(f"coder: {co.get('columns', '')}")
    ax.set_ylabel(f"reference: {co.get('rows', '')}")
    ax.set_title(
        "Which codes the coder gives where the reference has a code\n"
        "(row share; the diagonal is agreement)",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(fig)


def plot_calibration(cal: dict[str, Any] | None) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not cal or not cal.get("n"):
        return None
    bins = [b for b in cal["bins"] if b["n"]]
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1)
    xs = [b["mean_confidence"] for b in bins]
    ys = [b["accuracy"] for b in bins]
    err = [
        # clipped at 0: a bootstrap bound can sit a rounding error past the estimate
        [
            max(0.0, y - (b["accuracy_low"] if b["accuracy_low"] is not None else y))
            for y, b in zip(ys, bins, strict=True)
        ],
        [
            max(0.0, (b["accuracy_high"] if b["accuracy_high"] is not None else y) - y)
            for y, b in zip(ys, bins, strict=True)
        ],
    ]
    ax.errorbar(xs, ys, yerr=err, fmt="o-", color="#1f5fa8", capsize=3)
    for x, y, b in zip(xs, ys, bins, strict=True):
        ax.annotate(f"n={b['n']}", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (bin mean)")
    ax.set_ylabel("share of tags the reference agrees with")
    auroc = cal.get("auroc") or {}
    ax.set_title(f"Calibration (ECE {fmt(cal.get('ece'))}, AUROC {fmt_ci(auroc)})", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def _short(code: str, limit: int = 34) -> str:
    return code if len(code) <= limit else "…" + code[-(limit - 1) :]


# --------------------------------------------------------------------------- rendering


def render_html(results: dict[str, Any], *, plots: bool = True) -> str:
    """The HTML report (self-contained: CSS inline, plots embedded)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("qualflow", "report_templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    env.filters["ci"] = fmt_ci
    env.filters["num"] = fmt
    env.filters["band"] = band
    env.filters["share"] = share
    env.filters["reading"] = reading_text
    rows, unused = code_rows(results)
    images = {}
    if plots:
        images = {
            "forest": plot_forest(rows),
            "pr": plot_precision_recall(rows),
            "cooc": plot_cooccurrence(results),
            "calibration": plot_calibration(results.get("calibration")),
        }
    return env.get_template("report.html.j2").render(
        r=results,
        s=results["scope"],
        warnings=header_warnings(results),
        learned=learned_lines(results),
        coverage=coverage_text(results),
        human_note=human_note(results),
        answered=answered_rows(results),
        answered_label=(results.get("answered_only") or {}).get("label", ""),
        rows=rows[:MAX_TABLE_ROWS],
        hidden_rows=max(0, len(rows) - MAX_TABLE_ROWS),
        unused=unused,
        headline=headline(results, rows),
        overall=overall_rows(results),
        categories=category_rows(results),
        levels=level_rows(results),
        level_codes=level_code_rows(results),
        levels_note=levels_note(results),
        levels_data=results.get("levels") or {},
        resampling=resampling_text(results.get("levels") or {}),
        images=images,
    )


def render_markdown(results: dict[str, Any], *, max_rows: int = 30) -> str:
    """A Markdown summary (for a Prefect artifact or a pull request)."""
    s = results["scope"]
    rows, unused = code_rows(results)
    lines = [f"# Agreement: {results['experiment']}", ""]
    lines += [f"> **WARNING:** {w}" for w in header_warnings(results)]
    if header_warnings(results):
        lines.append("")
    lines += [
        _plain(headline(results, rows)),
        "",
        f"Coder learned from: {'; '.join(learned_lines(results))}.",
        "",
        f"Scope: {s['passages']} passages, {coverage_text(results) or 'coverage not recorded'}; "
        f"codebook {s.get('codebook')} "
        f"`{s.get('codebook_version')}`; coder `{s['coder']}` (model `{s.get('model') or '-'}`, "
        f"prompt `{s.get('prompt_version') or '-'}`"
        + (f", coding unit `{s['coding_unit']}`" if s.get("coding_unit") else "")
        + f"); reference `{s['reference']}`; "
        f"{s['n_boot']} bootstrap resamples of {s.get('resampling') or 'passages'}, "
        f"seed {s['seed']}.",
        "",
        "| code | ref / coder tags | precision | recall | F1 | kappa [95% CI] | AC1 "
        "| human-human kappa | baseline kappa | flags |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows[:max_rows]:
        lines.append(
            f"| {r['code']} | {r['positives_a']} / {r['positives_b']} "
            f"| {fmt(r['precision']['value'])} | {fmt(r['recall']['value'])} "
            f"| {fmt(r['f1']['value'])} | {fmt_ci(r['kappa'])} | {fmt(r['ac1']['value'])} "
            f"| {fmt((r['human_kappa'] or {}).get('value'))} | {fmt(r['baseline_kappa'])} "
            f"| {', '.join(r['flags'])} |"
        )
    if len(rows) > max_rows:
        lines.append(
            f"| … {len(rows) - max_rows} more codes in the HTML report | | | | | | | | | |"
        )
    if unused:
        lines += ["", f"{len(unused)} codes used by neither coder (figures undefined)."]
    lines += ["", *levels_markdown(results, max_rows)]
    cover = (results.get("coverage") or {}).get("share")
    lines += [
        "",
        f"| overall (all passages; coverage {share(cover)}) | coder vs reference "
        "| human-human | reading | baseline | difference | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in overall_rows(results):
        lines.append(
            f"| {o['label']} | {o['machine']} | {o['human'] or '-'} | {o['reading'] or '-'} "
            f"| {o['baseline'] or '-'} | {o['diff'] or '-'} | {o['verdict'] or '-'} |"
        )
    answered = answered_rows(results)
    if answered:
        label = results["answered_only"]["label"]
        lines += ["", f"| {label} | coder vs reference |", "| --- | --- |"]
        lines += [f"| {o['label']} | {o['machine']} |" for o in answered]
    cal = results.get("calibration")
    if cal:
        lines += [
            "",
            f"Calibration: {cal['n']} tags, accuracy {fmt(cal['accuracy'])}, "
            f"ECE {fmt(cal['ece'])}, AUROC {fmt_ci(cal['auroc'])}.",
        ]
    if results.get("problems"):
        lines += ["", "Problems:", *[f"- {p}" for p in results["problems"][:20]]]
    return "\n".join(lines) + "\n"
