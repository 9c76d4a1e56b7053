"""`neuropredict promote`: move `production` on evidence, and back.

A promotion first shows the candidate against production:
- offline: both re-scored on the project's test period exactly as `register` scores them (the same
  rows for both), so the registration gate applies to any version, however it was registered;
- live: when the shadow topic holds the candidate's forecasts, both on the same live ticks.
It refuses in one line when the candidate fails the gate, or is significantly worse than
production live (DM t of its squared errors minus production's above promote.max_dm_t, once both
scored at least promote.min_ticks ticks), unless forced; a forced move is recorded as such.
`--rollback` returns `production` to the version it held before the current one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from neuropredict import compare, intervals, kafka_io, promotions, registry
from neuropredict.errors import NeuropredictError
from neuropredict.features import series_splits
from neuropredict.settings import environment
from neuropredict.settings.contracts import PRODUCTION_ALIAS, Topics
from neuropredict.settings.paths import Paths
from neuropredict.settings.schema import Params

log = logging.getLogger(__name__)


@dataclass
class Evidence:
    """What a promotion shows (lines), what speaks against it (refusals), and the figures recorded."""

    lines: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)


def promote(params: Params, project: Paths, topics: Topics, candidate: str, force: bool = False,
            bootstrap: str | None = None, show=print) -> promotions.Move | None:
    """Check the evidence, show it, and move production to `candidate` (None: it already is)."""
    name = params.register.model_name
    registry.require_version(name, candidate)
    production = registry.alias_version(name, PRODUCTION_ALIAS)
    if production == str(candidate):
        show(f"{name}: version {candidate} is production already; nothing moved")
        return None
    evidence = gather(params, project, topics, str(candidate), production, bootstrap)
    for line in evidence.lines:
        show(line)
    if evidence.refusals and not force:
        raise NeuropredictError(f"refusing to promote version {candidate}: {'; '.join(evidence.refusals)}. "
                                f"`neuropredict promote {candidate} --force` promotes it anyway (recorded as forced)")
    if force:
        why = "forced" + (f" past: {'; '.join(evidence.refusals)}" if evidence.refusals
                          else " (the evidence allowed it)")
        return promotions.move(name, PRODUCTION_ALIAS, str(candidate), "force", why, evidence.figures)
    return promotions.move(name, PRODUCTION_ALIAS, str(candidate), "promote",
                           "the evidence allows it: " + "; ".join(_verdicts(evidence)), evidence.figures)


def rollback(params: Params, reason: str | None = None, kind: str = "rollback", actor: str | None = None,
             evidence: dict[str, float] | None = None) -> promotions.Move:
    """Production back to the version it held before the current one (from the alias history)."""
    name = params.register.model_name
    current = registry.alias_version(name, PRODUCTION_ALIAS)
    previous = promotions.previous_version(name, PRODUCTION_ALIAS, current) if current else None
    if previous is None:
        raise NeuropredictError(f"no previous production of {name} v{current} is recorded in the alias history "
                                f"(`neuropredict history`): promote a version by number instead")
    return promotions.move(name, PRODUCTION_ALIAS, previous, kind, reason or f"rolled back from v{current} by hand",
                           evidence, actor)


def gather(params: Params, project: Paths, topics: Topics, candidate: str, production: str | None,
           bootstrap: str | None = None) -> Evidence:
    evidence = Evidence()
    _offline(params, project, candidate, production, evidence)
    if production is not None:
        _live(params, topics, bootstrap or environment.kafka_bootstrap(), candidate, production, evidence)
    return evidence


def _offline(params: Params, project: Paths, candidate: str, production: str | None, evidence: Evidence) -> None:
    """Both versions on the test period, the candidate through the registration gate."""
    name = params.register.model_name
    try:
        series = registry.load_series(params, project)
        period = series_splits(series, params.featurize).test_period
    except (OSError, NeuropredictError) as exc:
        evidence.lines.append(f"offline: the test data is not here ({exc}); the registration gate cannot be checked")
        evidence.refusals.append("the registration gate cannot be checked without the test data (run `dvc repro`)")
        return
    evidence.lines.append(f"offline, test period {period} (the same rows for both):")
    evidence.lines.append(f"  {'version':<20}{'MSE':>10}{'persist.':>10}{'mean skill':>12}{'worst DM t':>11}"
                          f"  coverage %")
    for role, version in (("production", production), ("candidate", candidate)):
        if version is None:
            continue
        try:
            scored = registry.offline_evidence(registry.load(name, version=version).forecaster, series, params)
        except Exception as exc:  # another interval or other symbols: say so, never a traceback
            evidence.lines.append(f"  v{version} ({role}) cannot be scored on this test period: {str(exc)[:120]}")
            if role == "candidate":
                evidence.refusals.append(f"version {candidate} cannot be scored on the test period {period}")
            continue
        pooled = scored.scores["_pooled"]
        coverage = " ".join(f"{intervals.label(p)}: {scored.spreads['_pooled'][f'coverage_{intervals.label(p)}']:.1f}"
                            for p in scored.levels) if scored.spreads else "-"
        evidence.lines.append(f"  {f'v{version} ({role})':<20}{pooled['mse']:>10.4f}{pooled['persistence_mse']:>10.4f}"
                              f"{100 * pooled['mean_skill']:>+11.2f}%{pooled['max_dm_t']:>+11.2f}  {coverage}")
        evidence.figures.update({f"{role}_{k}": v for k, v in scored.summary().items()})
        if role == "candidate":
            failed = registry.gate_reasons(scored, params)
            evidence.lines.append("  registration gate: " + ("passes" if not failed else "FAILS: " + "; ".join(failed)))
            if failed:
                evidence.refusals.append("it fails the registration gate (" + "; ".join(failed) + ")")


def _live(params: Params, topics: Topics, bootstrap: str, candidate: str, production: str, evidence: Evidence) -> None:
    """Both versions on the same live ticks, when the stream holds them."""
    if not kafka_io.answers(bootstrap):
        evidence.lines.append(f"live: no Kafka answers at {bootstrap}; no live evidence")
        return
    try:
        result, _ = compare.compare(compare.live_rows(params, topics, bootstrap), production, candidate)
    except NeuropredictError as exc:
        evidence.lines.append(f"live: no shadow evidence yet ({exc})")
        return
    pooled, rule = result["paired"]["_pooled"], params.promote
    evidence.lines.append(compare.format_comparison(result))
    evidence.figures.update({"live_n": pooled["n"], "live_dm_t": pooled["dm_t"], "live_mse_candidate": pooled["mse_b"],
                             "live_mse_production": pooled["mse_a"], "live_persistence_mse": pooled["persistence_mse"]})
    if pooled["n"] < rule.min_ticks:
        evidence.lines.append(f"live: {int(pooled['n'])} ticks scored by both, fewer than promote.min_ticks = "
                              f"{rule.min_ticks}: not yet evidence either way")
    elif pooled["dm_t"] > rule.max_dm_t:
        evidence.refusals.append(f"it is significantly worse than production v{production} on {int(pooled['n'])} live "
                                 f"ticks (DM t {pooled['dm_t']:+.2f} > promote.max_dm_t = {rule.max_dm_t:g})")


def _verdicts(evidence: Evidence) -> list[str]:
    out = ["passes the registration gate"] if "candidate_test_mean_skill" in evidence.figures else []
    if "live_dm_t" in evidence.figures:
        out.append(f"live DM t {evidence.figures['live_dm_t']:+.2f} against production on "
                   f"{int(evidence.figures['live_n'])} ticks")
    return out or ["no evidence against it"]
