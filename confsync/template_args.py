"""Template functions that say what was wrong with their arguments.

Jinja hands a template function whatever the template gives it. A wrong type used to fail in
Python's own words (`AttributeError: 'int' object has no attribute 'split'`), naming neither
the function nor the argument, and a few functions answered instead of failing
(`fileExists(1)` is true: file descriptor 1 exists). `checked` wraps a function so that a
failure names the function, and a wrong argument says which one, what it must be and what it
got: `split: argument 1 (text) must be a string, got int 1`. The arguments are looked at only
after a failure (before the call for the few that would answer wrongly), so a render that
works costs one call through the wrapper and is otherwise unchanged.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

from confsync.filters import show_value


class TemplateFunctionError(ValueError):
    """A template function refused its arguments; `value` is the argument at fault (the
    renderer names the key it came from), `function` the template's name for the function
    once the message names it."""

    def __init__(self, message: str, value: object = None) -> None:
        super().__init__(message)
        self.value = value
        self.function: str | None = None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strings(value: object) -> bool:
    if isinstance(value, str) or not isinstance(value, Iterable):
        return False
    return not isinstance(value, list | tuple) or all(isinstance(v, str) for v in value)


# Annotation (as written, `from __future__ import annotations`) -> (what it must be, test).
# Anything else (`Any`, `*args`) is not checked.
_KINDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "str | None": ("a string", lambda v: v is None or isinstance(v, str)),
    "int": ("an integer", _is_int),
    "list[Any]": ("a list", lambda v: isinstance(v, list)),
    "list[str]": ("a list of strings",
                  lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "Iterable[str]": ("a list of strings", _is_strings),
}


def got(value: object) -> str:
    """What a function got, for its error: `int 1`, `str 'a'`, `None`."""
    return "None" if value is None else f"{type(value).__name__} {show_value(value)}"


@functools.cache
def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without one
        return None


def wrong_argument(name: str, function: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> TemplateFunctionError | None:
    """The error for the first argument of the wrong type or number, None if all fit. (For
    the few functions a large template calls per item, which raise it themselves rather than
    pay a call through `checked`.)"""
    signature = _signature(getattr(function, "__func__", function))
    if signature is None:
        return None
    params = list(signature.parameters.values())
    if params and params[0].name == "self" and hasattr(function, "__self__"):
        params = params[1:]  # a bound method: `self` is not the template's argument
        signature = signature.replace(parameters=params)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        shown = ", ".join(p.name for p in params)
        return _named(TemplateFunctionError(f"{name}: {exc} (it takes {name}({shown}))"), name)
    for position, param in enumerate(params, 1):
        if param.name not in bound.arguments or param.kind in (param.VAR_POSITIONAL,
                                                               param.VAR_KEYWORD):
            continue
        kind = _KINDS.get(str(param.annotation))
        value = bound.arguments[param.name]
        if kind is not None and not kind[1](value):
            hint = " (atoi turns a string into one)" if kind[0] == "an integer" and isinstance(
                value, str) else ""
            return _named(TemplateFunctionError(f"{name}: argument {position} ({param.name}) "
                                                f"must be {kind[0]}, got {got(value)}{hint}",
                                                value), name)
    return None


def checked(name: str, function: Callable[..., Any], *,
            before: bool = False) -> Callable[..., Any]:
    """`function` as template function `name`: any failure of the types a wrong argument
    raises (and its own TemplateFunctionError) names `name`; `before` checks the argument
    types before calling, for functions that would answer a wrong type instead of failing."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        if before and (wrong := wrong_argument(name, function, args, kwargs)) is not None:
            raise wrong
        try:
            return function(*args, **kwargs)
        except _REFUSALS as exc:
            raise _refused(name, function, args, kwargs, exc) from None

    return call


def checked_method(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """`checked` for a method, made once per class: `types.MethodType(result, instance)`
    is the instance's template function. (A render binds a handful of functions to its
    data; `checked` on each bound method cost ~1 us apiece in `functools.wraps`.) Errors
    read as `checked` on the bound method's."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except _REFUSALS as exc:
            raise _refused(name, types.MethodType(method, self), args, kwargs, exc) from None

    return call


# What a wrong argument raises in Python's own words (and TemplateFunctionError, a ValueError).
_REFUSALS = (TypeError, AttributeError, ValueError, LookupError, ArithmeticError)


def _refused(name: str, function: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], exc: Exception) -> TemplateFunctionError:
    """The error a checked `function` raises for `exc`: naming `name`, and the argument at
    fault when one is."""
    if isinstance(exc, TemplateFunctionError) and exc.function is not None:
        # Named already (by the function itself, or an inner checked one): by the
        # name this template called it (`json` is `fromjson`).
        text = str(exc)
        if exc.function != name and text.startswith(f"{exc.function}:"):
            exc.args = (name + text[len(exc.function):],)
        return _named(exc, name)
    wrong = wrong_argument(name, function, args, kwargs)
    if wrong is not None:
        return wrong
    if not isinstance(exc, TemplateFunctionError):
        shown = ", ".join(show_value(a) for a in args)
        return _named(TemplateFunctionError(
            f"{name}({shown}): {type(exc).__name__}: {exc}"), name)
    if not str(exc).startswith(name):
        exc.args = (f"{name}: {exc}",)  # same class: LookupUnavailable is retried
    if exc.value is None and len(args) == 1 and not kwargs:
        exc.value = args[0]  # what a one-argument function refuses is its argument
    return _named(exc, name)


def _named(exc: TemplateFunctionError, name: str) -> TemplateFunctionError:
    exc.function = name
    return exc


def checked_all(functions: dict[str, Callable[..., Any]],
                before: Iterable[str] = ()) -> dict[str, Callable[..., Any]]:
    first = frozenset(before)
    return {name: checked(name, function, before=name in first)
            for name, function in functions.items()}
