"""Which renders read the world besides the data: their output is not a function of it alone.

`once`'s render memo (render_memo.py) may stand in for a render only when the output depends
on nothing but the code, the templates, the resource and the keys it reads. A template function
that asks the host (getenv, hostname, fileExists, the DNS and interface lookups, the clock) or
chance (Jinja's `random` and `lipsum`) counts its calls here; a render that made any is never
memoized. tests/unit/test_render_memo.py fails when a template function is added without being
named pure or impure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

# confd's functions (and Jinja's) whose answer is not a function of their arguments.
IMPURE_FUNCTIONS = frozenset({
    "getenv", "datetime", "hostname", "fileExists", "lookupIP", "lookupIPV4", "lookupIPV6",
    "lookupSRV", "lookupIfaceIPV4", "lookupIfaceIPV6", "random", "lipsum",
})

_calls = 0  # renders run one at a time, on one thread: no lock


def calls() -> int:
    """How many calls of impure functions were made so far (compare before and after)."""
    return _calls


def impure(function: F) -> F:
    """`function`, counting its calls."""

    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Any:
        global _calls
        _calls += 1
        return function(*args, **kwargs)

    counted.confsync_impure = True  # type: ignore[attr-defined]
    return counted  # type: ignore[return-value]


def is_impure(function: object) -> bool:
    """Whether `function` is one `impure` counts (a `{% memo %}` block may not call it)."""
    return getattr(function, "confsync_impure", False) is True


def counting(render: Callable[[], R]) -> tuple[R, bool]:
    """`render()`'s result, and whether it called no impure function on the way (so that its
    output is a function of its inputs: the memo and SIGHUP's judged renders may keep it)."""
    before = _calls
    result = render()
    return result, _calls == before


def mark_impure(functions: dict[str, Any], pure: Collection[str] = ()) -> None:
    """Wrap, in place, the entries of a Jinja globals or filters dict named in IMPURE_FUNCTIONS,
    but those named in `pure` (a validating filter may have the name of an impure function)."""
    for name in (IMPURE_FUNCTIONS & functions.keys()).difference(pure):
        functions[name] = impure(functions[name])
