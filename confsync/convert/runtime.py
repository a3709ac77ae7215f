"""Go's value semantics for converted templates: printing, printf verbs, len, index, range.

Converted templates call these (`go_str`, `go_printf`, ...) only where Python and Go differ, so
the output stays byte-identical to confd's: Go prints `true`, `<no value>`, `[a b]`,
`map[k:v]` and floats as `1e+06`; `len` counts bytes; JSON numbers are float64.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from confsync.confd_funcs import GoMap
from confsync.template_args import TemplateFunctionError, checked, checked_all


class GoFormatError(TemplateFunctionError):
    """A printf format the converter does not reproduce faithfully."""


def go_float(value: float) -> str:
    """Go's %v for a float64: the shortest digits that read back exactly, in exponent form when
    the exponent is below -4 or from 6 up (measured with Go: 123456 -> "123456",
    1234567 -> "1.234567e+06", 1e-05 -> "1e-05")."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    exp = len(digits) + int(exponent) - 1  # decimal exponent of the first digit
    neg = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{neg}0.{'0' * (-exp - 1)}{digits}"
    if exp + 1 >= len(digits):
        return neg + digits + "0" * (exp + 1 - len(digits))
    return f"{neg}{digits[:exp + 1]}.{digits[exp + 1:]}"


def _inner(value: Any) -> str:
    """How Go prints a value nested in a slice or map (nil is `<nil>` there)."""
    return "<nil>" if value is None else go_str(value)


def go_str(value: Any) -> str:
    """Go's fmt.Print of one value, as text/template prints an action's result."""
    if value is None:
        return "<no value>"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_inner(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a KV pair or an SRV record
        return "{" + " ".join(_inner(v) for v in value) + "}"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_inner(v) for v in value) + "]"
    return str(value)


def go_len(value: Any) -> int:
    """Go's len: a string's length in bytes."""
    if isinstance(value, str):
        return len(value.encode())
    if value is None:
        return 0
    return len(value)


def go_index(value: Any, *keys: Any) -> Any:
    """Go's index: a missing map key gives nil (not an error), a list index must be in range."""
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list | tuple | str):
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(value):
                raise TemplateFunctionError(f"index out of range: {key!r}")
            value = value.encode()[key] if isinstance(value, str) else value[key]
        elif value is None:
            raise TemplateFunctionError("index of untyped nil")
        else:
            raise TemplateFunctionError(f"can't index item of type {type(value).__name__}")
    return value


def go_items(value: Any) -> list[tuple[Any, Any]]:
    """What `range $k, $v := x` visits: (index, element) of a list, (key, value) of a map by
    sorted key, nothing for nil."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [(k, value[k]) for k in sorted(value)]
    if isinstance(value, list | tuple):
        return list(enumerate(value))
    raise TemplateFunctionError(f"range can't iterate over {go_str(value)}")


def go_values(value: Any) -> list[Any]:
    """What `range x` visits: elements of a list, values of a map by sorted key."""
    return [v for _, v in go_items(value)]


def go_json(text: str) -> Any:
    """confd's `json`/`jsonArray`: numbers are Go's float64, a missing field is nil."""
    try:
        return json.loads(text, parse_int=float, object_pairs_hook=GoMap)
    except (TypeError, ValueError) as exc:
        raise TemplateFunctionError(f"value is not valid JSON: {exc}") from None


def go_json_object(text: str) -> Any:
    parsed = go_json(text)
    if not isinstance(parsed, dict):
        raise TemplateFunctionError(f"expected a JSON object, found {str(text)[:60]!r}")
    return parsed


def go_json_array(text: str) -> Any:
    parsed = go_json(text)
    if not isinstance(parsed, list):
        raise TemplateFunctionError(f"expected a JSON array, found {str(text)[:60]!r}")
    return parsed


def _print_operands(args: tuple[Any, ...], spaced: bool) -> str:
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and (spaced or (not isinstance(arg, str) and not isinstance(args[i - 1], str))):
            out.append(" ")
        out.append("<nil>" if arg is None else go_str(arg))
    return "".join(out)


def go_print(*args: Any) -> str:
    """Go's fmt.Sprint: a space between operands when neither is a string."""
    return _print_operands(args, spaced=False)


def go_print_spaced(*args: Any) -> str:
    """Go's fmt.Sprintln without its newline (the converter emits that as text)."""
    return _print_operands(args, spaced=True)


def go_html(*args: Any) -> str:
    text = go_print(*args)
    return (text.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&#34;").replace("\x00", "\ufffd"))


def go_urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(go_print(*args), safe="-_.~")


# ---- printf ------------------------------------------------------------------------------

VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?([a-zA-Z%])")
SUPPORTED_VERBS = frozenset("vsdqxXfFeEgGtcob%")


def _quote(text: str) -> str:
    """Go's strconv.Quote."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                        "\t": "\\t", "\v": "\\v"}[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _go_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(
        type(value), type(value).__name__)


def _pad(text: str, flags: str, width: str | None) -> str:
    if not width:
        return text
    w = int(width)
    if "-" in flags:
        return text.ljust(w)
    return text.rjust(w)


def _format_one(value: Any, flags: str, width: str | None, prec: str | None, verb: str) -> str:
    if isinstance(value, list | tuple) and not hasattr(value, "_fields") and verb != "v":
        return "[" + " ".join(_format_one(v, flags, width, prec, verb) for v in value) + "]"
    bad = f"%!{verb}({_go_type(value)}={go_str(value) if value is not None else ''})"
    if value is None:
        return _pad("<nil>", flags, width) if verb == "v" else f"%!{verb}(<nil>)"
    pyflags = "".join(c for c in flags if c in "-+ 0#")
    if verb == "v":
        text = go_str(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and "+" in flags \
                and not text.startswith("-"):
            text = "+" + text
        return _pad(text, flags, width)
    if verb == "s":
        if not isinstance(value, str):
            return bad
        text = value if prec is None else value[:int(prec or 0)]
        return _pad(text, flags, width)
    if verb == "q":
        if isinstance(value, str):
            return _pad(_quote(value), flags, width)
        if isinstance(value, int) and not isinstance(value, bool):
            return _pad("'" + _quote(chr(value))[1:-1].replace("\\\"", '"') + "'", flags, width)
        return bad
    if verb == "t":
        return _pad("true" if value else "false", flags, width) if isinstance(value, bool) \
            else bad
    if verb == "c":
        return _pad(chr(value), flags, width) if type(value) is int else bad
    if verb in "xX" and isinstance(value, str):
        text = value.encode().hex()
        return _pad(text.upper() if verb == "X" else text, flags, width)
    if verb in "dxXob":
        if type(value) is not int:
            return bad
        spec = {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb]
        body = format(abs(value), spec)
        if prec:
            body = body.rjust(int(prec), "0")
        sign = "-" if value < 0 else ("+" if "+" in flags else (" " if " " in flags else ""))
        if "#" in flags and verb in "xX":
            body = ("0x" if verb == "x" else "0X") + body
        text = sign + body
        if width and "0" in flags and "-" not in flags and prec is None:
            return sign + body.rjust(int(width) - len(sign), "0")
        return _pad(text, flags, width)
    if verb in "fFeEgG":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return bad
        number = float(value)
        if verb in "gG" and prec is None:
            text = go_float(number)
            if "+" in flags and not text.startswith("-"):
                text = "+" + text
            text = text.upper() if verb == "G" else text
        else:
            spec = f"{pyflags.replace('-', '').replace('0', '')}.{prec or (0 if prec == '' else 6)}"
            text = format(number, spec + verb)
            if verb in "eEgG":
                text = re.sub(r"([eE][+-])(\d)$", r"\g<1>0\2", text)
        if width and "0" in flags and "-" not in flags:
            sign = text[0] if text[0] in "+-" else ""
            return sign + text[len(sign):].rjust(int(width) - len(sign), "0")
        return _pad(text, flags, width)
    raise GoFormatError(f"printf verb %{verb} is not supported by the converter")


def check_format(fmt: str) -> str | None:
    """The first verb in `fmt` the converter cannot reproduce (checked at conversion time)."""
    for match in VERB.finditer(fmt):
        flags, _, _, verb = match.groups()
        if verb not in SUPPORTED_VERBS:
            return match.group()
        if "#" in flags and verb not in "xX":
            return match.group()
    if "%[" in fmt or "%*" in fmt or re.search(r"%[-+# 0]*\d*\.?\*", fmt):
        return "%[n] / %* argument indexes"
    return None


def go_printf(fmt: str, *args: Any) -> str:
    """Go's fmt.Sprintf for the verbs in SUPPORTED_VERBS (others are refused when converting)."""
    out: list[str] = []
    pos = 0
    arg_index = 0
    for match in VERB.finditer(fmt):
        out.append(fmt[pos:match.start()])
        pos = match.end()
        flags, width, prec, verb = match.groups()
        if verb == "%":
            out.append("%")
            continue
        if arg_index >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_one(args[arg_index], flags, width, prec, verb))
        arg_index += 1
    out.append(fmt[pos:])
    if arg_index < len(args):
        extra = ", ".join(f"{_go_type(a)}={go_str(a)}" for a in args[arg_index:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


RUNTIME_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "go_str": go_str,
    "go_len": go_len,
    "go_index": go_index,
    "go_items": go_items,
    "go_values": go_values,
    "go_json": go_json_object,
    "go_json_array": go_json_array,
    "go_print": go_print,
    "go_print_spaced": go_print_spaced,
    "go_html": go_html,
    "go_urlquery": go_urlquery,
    "go_printf": go_printf,
}


def register(env: Any) -> None:
    """Make the runtime of converted templates Jinja globals (and `go_str` a filter too)."""
    env.globals.update(checked_all(RUNTIME_FUNCTIONS))
    env.filters["go_str"] = checked("go_str", go_str)
