"""One log event per resource and apply, shared by `confsync once` and the watch loop."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confsync.outcome import Outcome, Status
from confsync.provenance import show_key
from confsync.said import FIRST, Said

log = logging.getLogger("confsync")


def report(outcome: Outcome, revision: int, changed_keys: Sequence[str] = (),
           changed_count: int | None = None, quiet: bool = False,
           said: Said | None = FIRST, warn: Sequence[bool] = ()) -> None:
    """One log event per resource and apply, with the fields a collector wants.

    `changed_count`: the changes in all, when more than `changed_keys` names. `quiet`: a file
    found up to date is a DEBUG event (a retry that finds what the last one found). `said`
    (a failure, see repeated_failures.py): None, a DEBUG event (failing as the one last
    logged did); else what to say with it. `warn`: for
    each of the outcome's warnings, whether it is a WARNING (the others are DEBUG: said
    before, see RepeatedWarnings); all of them when empty."""
    res = outcome.resource
    fields: dict[str, object] = {"resource": res.name, "dest": str(res.dest),
                                 "revision": revision, "outcome": outcome.status.value,
                                 "seconds": round(outcome.seconds, 4)}
    if changed_keys:
        fields["changed_keys"] = list(changed_keys[:20])
        fields["changed_count"] = max(len(changed_keys), changed_count or 0)
    # Counting the lines a write changed is two multiset differences over every line (~2 ms
    # at 5,000): only for an event that is logged (a `once --log-level error` logs none).
    if outcome.status is Status.UPDATED and log.isEnabledFor(
            logging.WARNING if outcome.warnings else logging.INFO):
        fields["lines_added"], fields["lines_removed"] = outcome.line_changes()
        if outcome.reload is not None:
            fields["reload"] = outcome.reload.kind.value
    for warning, due in zip(outcome.warnings, warn or [True] * len(outcome.warnings),
                            strict=True):
        log.log(logging.WARNING if due else logging.DEBUG, "resource %s: %s", res.name, warning,
                extra={**fields, "step": "render", "key": show_key(warning.key)})
    if outcome.status is Status.FAILED and outcome.error is not None:
        fields["step"] = outcome.error.step
        if said is None:
            log.debug("%s (failed as before)", outcome.error, extra=fields)
        else:
            line, extra = failure_line(str(outcome.error), f"resource {res.name}: ", said)
            log.error("%s", line, extra={**fields, **extra})
    elif outcome.status is Status.UPDATED:
        done = str(outcome.reload) if outcome.reload is not None and outcome.reload.detail else ""
        # Equal bytes: the file was in place already and only its target was asked again.
        verb = "wrote" if outcome.previous is None or (
            outcome.previous.content != outcome.content) else "already wrote"
        log.info("resource %s: %s %s%s", res.name, verb, res.dest, f" ({done})" if done else "",
                 extra=fields)
    else:
        # A file found current whose target was asked whether it runs (at the start, and while
        # nothing ran): what it found.
        done = str(outcome.reload) if outcome.reload is not None and outcome.reload.detail else ""
        if done:
            fields["reload"] = outcome.reload.kind.value if outcome.reload else ""
        log.log(logging.DEBUG if quiet else logging.INFO, "resource %s: %s is up to date%s",
                res.name, res.dest, f" ({done})" if done else "", extra=fields)


def failure_line(error: str, prefix: str, said: Said) -> tuple[str, dict[str, object]]:
    """A failure's line (`error` starts with `prefix`, the resource's name) and the event
    fields that say the same."""
    if said.failures:
        return (f"{prefix}failing intermittently: {switches(said)}; last: "
                f"{error.removeprefix(prefix)}"
                " (said at most every 5 minutes until it stays well or failing)",
                {"intermittent_failures": said.failures,
                 "intermittent_recoveries": said.recoveries})
    if said.before_unsaid:
        return (f"{error} (the previous failure, {shorten(said.before.removeprefix(prefix))}, "
                f"repeated {said.before_unsaid} times unlogged)",
                {"previous_unlogged_failures": said.before_unsaid})
    if said.unsaid:
        return (f"{error} (and {said.unsaid} more times since it was last logged)",
                {"unlogged_failures": said.unsaid})
    return error, {}


def switches(said: Said) -> str:
    """An intermittent failure's counts: `3 failures, 1 recovery in the last 4m10s`."""
    return (f"{said.failures} failure{'s' * (said.failures != 1)}, {said.recoveries} "
            f"recover{'ies' if said.recoveries != 1 else 'y'} in the last {span(said.over)}")


def span(seconds: float) -> str:
    """`seconds` as an operator reads it: 45s, 4m10s."""
    whole = max(0, round(seconds))
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60:02d}s"


def shorten(text: str, limit: int = 160) -> str:
    """A reason said again in another's line: its start (it was logged whole before)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def settled_line(name: str, reason: str | None, said: Said) -> tuple[str, dict[str, object]]:
    """The end of an intermittent failure: `name` stayed well (`reason` None) or failing."""
    prefix = f"resource {name}: "
    extra: dict[str, object] = {"intermittent_failures": said.failures,
                                "intermittent_recoveries": said.recoveries}
    since = f" ({switches(said)})" if said.failures or said.recoveries \
        else ""
    if reason is None:
        return f"{prefix}recovered: no longer failing intermittently{since}", extra
    return f"{prefix}failing, no longer intermittently: {reason.removeprefix(prefix)}{since}", \
        extra
