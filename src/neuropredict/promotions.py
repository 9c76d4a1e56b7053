"""Alias history: every move of an alias (`production`, `challenger`) is made here and recorded.

MLflow keeps no alias history (mlflow#6180, #2169), so each move is a run of its own in the
`model-promotions` experiment: when, from -> to, who (user@host, or `guard`), what kind of move,
why, and the evidence as metrics; the versions get tags too (`production_since`, ...), so both
show in the MLflow UI. `neuropredict history` reads the runs back.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from neuropredict import tracking
from neuropredict.settings.contracts import PRODUCTION_ALIAS, PROMOTIONS_EXPERIMENT_NAME

log = logging.getLogger(__name__)

# What moved the alias: the registration gate, a checked or forced promotion, a rollback by hand,
# or the guard's automatic rollback.
KINDS = ("gate", "promote", "force", "rollback", "guard")
GUARD_ACTOR = "guard"


@dataclass(frozen=True)
class Move:
    """One recorded move of an alias."""

    at_ms: int
    alias: str
    from_version: str | None
    to_version: str
    actor: str
    kind: str
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)
    run_id: str = ""

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def current_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def alias_version(name: str, alias: str = PRODUCTION_ALIAS) -> str | None:
    """The version an alias points at, or None (a cheap call: workers poll it for hot swaps)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(tracking.with_retry(lambda: tracking.client().get_model_version_by_alias(name, alias)).version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def move(name: str, alias: str, version: str, kind: str, reason: str, evidence: dict[str, float] | None = None,
         actor: str | None = None) -> Move:
    """Point name@alias at version and record the move (also when it points there already: a
    decision that kept it is history too)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of move {kind!r}; one of {', '.join(KINDS)}")
    client = tracking.client()
    previous = alias_version(name, alias)
    tracking.with_retry(lambda: client.set_registered_model_alias(name, alias, str(version)))
    done = Move(int(time.time() * 1000), alias, previous, str(version), actor or current_actor(), kind, reason,
                {k: float(v) for k, v in (evidence or {}).items() if v is not None})
    try:
        done = _record(name, done)
    except Exception as exc:  # the alias moved; a missing record must not undo or hide that
        log.error("%s@%s moved to v%s, but the move could not be recorded in MLflow: %s", name, alias, version, exc)
    log.info("%s@%s: v%s -> v%s (%s by %s): %s", name, alias, previous or "-", version, kind, done.actor, reason)
    return done


def _record(name: str, done: Move) -> Move:
    from mlflow.entities import Metric, RunTag

    client = tracking.client()
    exp_id = tracking.setup(PROMOTIONS_EXPERIMENT_NAME)
    tags = {"model_name": name, "alias": done.alias, "from_version": done.from_version or "", "kind": done.kind,
            "to_version": done.to_version, "actor": done.actor, "reason": done.reason[:4000],
            "mlflow.runName": f"{done.alias}: v{done.from_version or '-'} -> v{done.to_version} ({done.kind})"}
    run = tracking.with_retry(lambda: client.create_run(exp_id, start_time=done.at_ms, tags=tags))
    run_id = run.info.run_id
    metrics = [Metric(k, v, done.at_ms, 0) for k, v in done.evidence.items() if v == v]  # NaN: not evidence
    tracking.with_retry(lambda: client.log_batch(run_id, metrics=metrics, tags=[RunTag("moved_at", done.when)]))
    tracking.with_retry(lambda: client.set_terminated(run_id, end_time=done.at_ms))
    _tag_versions(client, name, done)
    return Move(**{**done.__dict__, "run_id": run_id})


def _tag_versions(client, name: str, done: Move) -> None:
    """On the versions themselves (the registry UI shows them): since when, by whom, why."""
    for key, value in ((f"{done.alias}_since", done.when), (f"{done.alias}_moved_by", done.actor),
                       (f"{done.alias}_move_kind", done.kind), (f"{done.alias}_reason", done.reason[:4000])):
        tracking.with_retry(lambda k=key, v=value: client.set_model_version_tag(name, done.to_version, k, v))
    if done.from_version and done.from_version != done.to_version:
        tracking.with_retry(lambda: client.set_model_version_tag(name, done.from_version, f"{done.alias}_until",
                                                                 done.when))


def history(name: str, alias: str | None = None) -> list[Move]:
    """Every recorded move of the model's aliases (or one alias), oldest first."""
    import mlflow

    client = tracking.client()
    found = tracking.with_retry(lambda: mlflow.get_experiment_by_name(PROMOTIONS_EXPERIMENT_NAME))
    if found is None:
        return []
    query = f"tags.model_name = '{name}'" + (f" and tags.alias = '{alias}'" if alias else "")
    runs = tracking.with_retry(lambda: client.search_runs([found.experiment_id], query, max_results=50_000,
                                                          order_by=["attributes.start_time ASC"]))
    return [Move(r.info.start_time, r.data.tags["alias"], r.data.tags.get("from_version") or None,
                 r.data.tags["to_version"], r.data.tags.get("actor", ""), r.data.tags.get("kind", ""),
                 r.data.tags.get("reason", ""), dict(r.data.metrics), r.info.run_id) for r in runs]


def last_move_to(name: str, alias: str, version: str) -> Move | None:
    """The latest recorded move that put `version` behind the alias (None: never recorded)."""
    moves = [m for m in history(name, alias) if m.to_version == str(version)]
    return moves[-1] if moves else None


def previous_version(name: str, alias: str, current: str) -> str | None:
    """What the alias pointed at before `current` took it over (None: nothing recorded)."""
    arrived = last_move_to(name, alias, current)
    if arrived is None or arrived.from_version in (None, str(current)):
        return None
    return arrived.from_version


def format_history(moves: list[Move]) -> str:
    if not moves:
        return "no alias moves recorded yet"
    head = f"{'when':<24}{'alias':<12}{'from':>6}{'to':>6}  {'kind':<9}{'by':<26}why"
    lines = [head, "-" * len(head)]
    for m in moves:
        lines.append(f"{m.when:<24}{m.alias:<12}{'v' + m.from_version if m.from_version else '-':>6}"
                     f"{'v' + m.to_version:>6}  {m.kind:<9}{m.actor[:25]:<26}{m.reason}")
    return "\n".join(lines)
