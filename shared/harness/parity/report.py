"""Parity results as text: one eval line, one train-step line, and a Markdown report per case (docs/harness.md)."""

from __future__ import annotations

from typing import Any

from shared.harness.parity.check import NOISE_FACTOR, REL_TOL
from shared.harness.parity.step import BN_MOMENTUM, STEP_REL_TOL
from shared.markdown import table


def _arrow(result: dict[str, Any]) -> str:
    return f"{result['source']}→{result['target']}"


def _sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def worst_stage(result: dict[str, Any]) -> dict[str, Any] | None:
    """The stage (logits included) with the largest difference relative to its own bound."""
    entries = [s for s in result["eval"]["stages"] + [result["eval"]["logits"]] if s["ratio"] is not None]
    return max(entries, key=lambda s: s["ratio"]) if entries else None


def eval_line(result: dict[str, Any]) -> str:
    """One line: the logits' difference against its bound, the worst stage's ratio, the first divergence."""
    ev = result["eval"]
    lg = ev["logits"]
    head = (f"parity {_arrow(result)} eval (random weights, BN stats calibrated on the batch, batch "
            f"{result['batch']} @ {result['size']}x{result['size']}, float32): ")
    if lg["max_abs"] is None:
        line = f"{head}✗ logits: {lg.get('note', '')}"
    else:
        line = (f"{head}max|Δlogits| {lg['max_abs']:.2e} {'≤' if lg['ok'] else '>'} {lg['bound']:.2e} "
                f"(max of {REL_TOL:g}·max(1, max|logit| {lg['max_ref']:.3g}) and {NOISE_FACTOR}x float32 noise "
                f"{lg['float32_noise']:.1e}) {'✓' if ev['ok'] else '✗'}")
        worst = worst_stage(result)
        if worst:
            line += f"; worst stage {worst.get('stage', 'logits')} at {worst['ratio']:.2g}x its bound"
    if ev["first_diverging_layer"]:
        fd = ev["first_diverging_layer"]
        detail = (f" (max|Δ| {fd['max_abs']:.3g} > {fd['bound']:.3g})" if fd.get("max_abs") is not None
                  else f" ({fd.get('note', '')})")
        line += f"; first diverging layer: {fd['name']}{detail}"
    return line


def update_verdict(train: dict[str, Any]) -> str:
    """The parameter update in words: within tolerance, beyond it, or not resolvable (chaotic)."""
    p = train["params"]
    text = f"update error {p['rel_update_error']:.1e} (norm, {train['dtype']}, ≤ {STEP_REL_TOL:g})"
    if p["sensitivity"] is not None:
        text += f", own sensitivity {p['sensitivity']:.1e}"
    if not p["ok"] and not p["resolvable"]:
        text += (f": not resolvable, weights perturbed by {p['probe']:g} already move the update by "
                 f"{p['sensitivity']:.1e} (chaotic at this depth)")
    return text


def train_line(result: dict[str, Any]) -> str:
    """One line: the SGD step's parameter / running-stat differences and the expected variance gap."""
    tr = result.get("train")
    if not tr:
        return ""
    mark = {"pass": "✓", "fail": "✗", "unresolvable": "~"}[tr["verdict"]]
    rv = tr["running_var"]
    return (
        f"parity {_arrow(result)} train (1 SGD step lr {tr['step']['lr']} momentum {tr['step']['momentum']} "
        f"wd {tr['step']['weight_decay']}): {update_verdict(tr)}, params max|Δ| {tr['params']['max_abs']:.2e} "
        f"(updates up to {tr['params']['max_update']:.2e}), running_mean max|Δ| {tr['running_mean']['max_abs']:.2e}, "
        f"running_var differs by up to {rv['max_rel_raw']:.2%} as expected (torch unbiased, Keras biased: "
        f"predicted {rv['max_rel_predicted']:.2%}, n={rv['n_range'][0]}..{rv['n_range'][1]}), "
        f"residual {rv['max_residual']:.2e} {mark}"
    )


def _stage_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in result["eval"]["stages"] + [{**result["eval"]["logits"], "stage": "logits"}]:
        ratio = "—" if s["ratio"] is None else f"{s['ratio']:.2g}"
        rows.append([s["stage"], s["name"], _sci(s["max_ref"]), _sci(s.get("float32_noise")), _sci(s["max_abs"]),
                     _sci(s["bound"]), ratio, "✓" if s["ok"] else "✗"])
    return rows


def _train_lines(result: dict[str, Any]) -> list[str]:
    tr = result["train"]
    rv = tr["running_var"]
    return [
        train_line(result), "",
        f"- loss ({tr['dtype']}): torch {tr['loss']['torch']:.9f}, keras {tr['loss']['keras']:.9f}",
        f"- parameter update (incl. coupled weight decay): {update_verdict(tr)}; max|Δ| "
        f"{tr['params']['max_abs']:.2e}, worst {tr['params']['worst'].get('name')}",
        f"- BN running mean: max|Δ| {tr['running_mean']['max_abs']:.2e}",
        f"- BN running variance: expected difference. PyTorch uses the unbiased batch variance "
        f"(×n/(n−1)), Keras the biased one, so torch − keras = {BN_MOMENTUM}·var_batch/(n−1): up to "
        f"{rv['max_rel_raw']:.3%} of the value here (predicted {rv['max_rel_predicted']:.3%}; "
        f"n = {rv['n_range'][0]}..{rv['n_range'][1]}); after subtracting the prediction the residual is "
        f"{rv['max_residual']:.2e}.",
        "",
    ]


def render_markdown(results: list[dict[str, Any]]) -> str:
    """A parity report: per case, the stage table (each stage against its own scale), first divergence, step."""
    lines = []
    for r in results:
        lines += [f"### {r['model']}: {_arrow(r)}", "", eval_line(r), ""]
        lines += table(["stage", "layer", "max|a|", "float32 noise", "max|Δ|", "bound", "Δ/bound", "ok"],
                       _stage_rows(r), "llrrrrrc")
        lines.append("")
        if "train" in r:
            lines += _train_lines(r)
    return "\n".join(lines)
