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
from typing import Any, NamedTuple

from confsync.confd_funcs import GoMap, GoTime
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
    from decimal import Decimal  # here: 1.5 ms of every render path's import, for printf's %v

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
    """Go's len: a string's length in bytes, a list's or a map's entries; of anything else
    (a number, a bool, a KV pair, nil) it fails the render as in confd."""
    if isinstance(value, str):
        return len(value.encode())
    if value is None:
        # confd executes templates with nil data, so `len $` (and `len .` outside range/with,
        # `len nil`, a missing key) has no value to measure: Go 1.19 fails the template with a
        # reflect panic rather than answering 0 (measured with confd 0.17)
        raise TemplateFunctionError("error calling len: len of untyped nil (confd's data `$` "
                                    "is nil, as is a missing key; confd fails: reflect: call "
                                    "of reflect.Value.Type on zero Value)")
    if isinstance(value, dict | list) or (isinstance(value, tuple)
                                          and not hasattr(value, "_fields")):
        return len(value)
    # Go's len takes strings, slices, arrays, maps and channels only; name the operand as
    # Go does (a KV pair is a struct to Go, though a Python tuple has a length)
    raise TemplateFunctionError(f"error calling len: len of type {_go_type(value)} "
                                f"(value {go_str(value)[:60]})", value)


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


class GoList(list[Any]):
    """A JSON array: Go's []interface{}, which confd's `join` refuses and `reverse` leaves as it
    is (they take []string), whatever the elements are."""


def _go_number(text: str) -> float:
    """A JSON number as Go's float64; one out of its range is an error (as json.Unmarshal)."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} out of range of float64")
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"invalid character {constant[0]!r} looking for beginning of value")


def _go_lists(value: Any) -> Any:
    if isinstance(value, list):
        return GoList(_go_lists(v) for v in value)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _go_lists(item)
    return value


def go_json(text: str) -> Any:
    """confd's `json`/`jsonArray`: numbers are Go's float64, a missing field is nil, arrays are
    []interface{}; NaN, Infinity and numbers beyond float64 are refused (Python took them)."""
    try:
        parsed = json.loads(text, parse_int=_go_number, parse_float=_go_number,
                            parse_constant=_not_json, object_pairs_hook=GoMap)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TemplateFunctionError(f"value is not valid JSON: {exc}") from None
    return _go_lists(parsed)


def go_json_object(text: str) -> Any:
    parsed = go_json(text)
    if parsed is None:  # `null` unmarshals into a nil map, no error: prints map[], ranges empty
        return GoMap()
    if not isinstance(parsed, dict):
        raise TemplateFunctionError(f"expected a JSON object, found {str(text)[:60]!r}")
    return parsed


def go_json_array(text: str) -> Any:
    parsed = go_json(text)
    if parsed is None:  # a nil slice, as in Go
        return GoList()
    if not isinstance(parsed, list):
        raise TemplateFunctionError(f"expected a JSON array, found {str(text)[:60]!r}")
    return parsed


def go_reverse(values: Any) -> Any:
    """confd's Reverse: reverses a []string in place; anything else comes back as it is: a
    JSON array, seq's []int, a string, and `gets`' items too (memkv.KVPairs, a named type that
    Reverse's `case []memkv.KVPair` does not match: measured with confd 0.17)."""
    if isinstance(values, list) and not isinstance(values, GoList) and all(
            isinstance(v, str) for v in values):
        values.reverse()
    return values


def go_join(values: Any, sep: str) -> str:
    """strings.Join: only a []string (a JSON array is []interface{} to Go, refused)."""
    if isinstance(values, GoList) or not isinstance(values, list | tuple) or not all(
            isinstance(v, str) for v in values):
        raise TemplateFunctionError(f"wrong type for value; expected []string; got "
                                    f"{_go_type(values)}")
    if not isinstance(sep, str):
        raise TemplateFunctionError(f"wrong type for value; expected string; got "
                                    f"{_go_type(sep)}")
    return sep.join(values)


# ---- comparisons -------------------------------------------------------------------------
# text/template's eq/ne/lt/le/gt/ge (Go 1.19): operands of different basic kinds are an error,
# not false (`eq "8080" 8080`, `eq 1 1.0` where a JSON number is a float64); a nil operand (a
# missing map entry) is unequal to anything but nil; lists and maps cannot be compared.
# The converter calls these only where it cannot tell the kinds are the same.


def _kind(value: Any) -> str:
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | dict) or (isinstance(value, tuple)
                                          and not hasattr(value, "_fields")):
        return "uncomparable"
    return "struct"


def go_eq(first: Any, *others: Any) -> bool:
    if not others:
        raise TemplateFunctionError("missing argument for comparison")
    k1 = _kind(first)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if first is not None and other is not None:
                raise TemplateFunctionError("error calling eq: incompatible types for comparison")
            continue
        if k2 == "uncomparable":
            raise TemplateFunctionError("error calling eq: invalid type for comparison")
        if first == other:
            return True
    return False


def go_ne(first: Any, second: Any) -> bool:
    return not go_eq(first, second)


def go_lt(first: Any, second: Any) -> bool:
    k1, k2 = _kind(first), _kind(second)
    if k1 not in ("int", "float", "string", "bool") or k2 not in ("int", "float", "string",
                                                                  "bool"):
        raise TemplateFunctionError("error calling lt: invalid type for comparison")
    if k1 != k2:
        raise TemplateFunctionError("error calling lt: incompatible types for comparison")
    if k1 == "bool":
        raise TemplateFunctionError("error calling lt: invalid type for comparison")
    return bool(first < second)


def go_le(first: Any, second: Any) -> bool:
    return go_lt(first, second) or go_eq(first, second)


def go_gt(first: Any, second: Any) -> bool:
    return not go_le(first, second)


def go_ge(first: Any, second: Any) -> bool:
    return not go_lt(first, second)


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


def _eval_args(args: tuple[Any, ...]) -> str:
    """text/template's evalArgs, the text html and urlquery escape: fmt.Sprint of the
    operands, a nil one first turned into the string "<no value>" (so `html nil` is
    &lt;no value&gt;, not &lt;nil&gt;, and no space is put next to it)."""
    return go_print(*("<no value>" if arg is None else arg for arg in args))


def go_html(*args: Any) -> str:
    text = _eval_args(args)
    return (text.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&#34;").replace("\x00", "\ufffd"))


def go_urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_eval_args(args), safe="-_.~")


# ---- printf ------------------------------------------------------------------------------
#
# Go's fmt behaviour (as its package documentation gives it, Go 1.19, confd's; checked against
# confd's output by tests/unit/test_confd_differential.py) for the values a converted
# template holds: a verb that does not fit the operand's type prints `%!verb(type=value)` with
# the operand printed by %v *under the same flags, width and precision*; a list, map or KV is
# printed element by element with the verb (`%6v` pads each element, `%d` of a map of strings
# is `map[%!d(string=a):...]`), as Go's printValue does.

# Go's verb: any character after the flags, width and precision ("" at the end: %!(NOVERB)).
VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.?)", re.DOTALL)
SUPPORTED_VERBS = frozenset("vsdqxXfFeEgGtcobU%")
_SHARP_VERBS = frozenset("xXobq")  # `#` elsewhere (%#v is Go syntax) is refused


class _Fmt(NamedTuple):
    """One verb's flags, as Go's fmt.fmt holds them (`zero` is dropped by `-`, as in Go). A
    NamedTuple, not a dataclass: the render path of `once` creates no dataclass (issue 11)."""

    minus: bool = False
    plus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    wid: int | None = None
    prec: int | None = None
    plus_v: bool = False  # %+v: struct field names


def _go_type(value: Any) -> str:
    """reflect.TypeOf(value).String() for the values a converted template holds."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return "memkv.KVPair" if type(value).__name__ == "KV" else "net.SRV"
    if isinstance(value, GoList):
        return "[]interface {}"
    if isinstance(value, GoTime):
        return "time.Time"
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str) for v in value):
            return "[]string"
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "[]int"
        if value and all(hasattr(v, "_fields") for v in value):
            return "[]memkv.KVPair"
        return "[]interface {}"
    return type(value).__name__


def _padding(f: _Fmt, n: int) -> str:
    return ("0" if f.zero else " ") * n if n > 0 else ""


def _pad(f: _Fmt, text: str) -> str:
    """Go's fmt.pad: width counts runes; zeros only to the left (`-` cleared `zero`)."""
    if f.wid is None or f.wid <= len(text):
        return text
    fill = _padding(f, f.wid - len(text))
    return text + fill if f.minus else fill + text


def _quote(text: str, ascii_only: bool = False) -> str:
    """Go's strconv.Quote (QuoteToASCII with `ascii_only`)."""
    out = ['"']
    for ch in text:
        out.append(_quote_char(ch, '"', ascii_only))
    out.append('"')
    return "".join(out)


def _quote_char(ch: str, quote: str, ascii_only: bool) -> str:
    code = ord(ch)
    if ch == quote or ch == "\\":
        return "\\" + ch
    if ch.isprintable() and not (ascii_only and code >= 0x80):
        return ch
    special = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}
    if ch in special:
        return special[ch]
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xD800 <= code <= 0xDFFF:
        code = 0xFFFD
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _rune(value: int) -> str:
    """Go's rune(c) for %c/%q: out of range or a surrogate is U+FFFD."""
    if not 0 <= value <= 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        return "\ufffd"
    return chr(value)


def _fmt_integer(f: _Fmt, value: int, base: int, verb: str) -> str:
    """Go's fmt.fmtInteger (precision and zero padding count digits; the sign goes first)."""
    negative = value < 0
    magnitude = abs(value) if value >= -(2**63) else 2**63
    if f.prec is not None:
        prec = f.prec
        if prec == 0 and value == 0:  # "print nothing", but pad (with spaces)
            return " " * (f.wid or 0)
    elif f.zero and f.wid is not None:
        prec = f.wid - (1 if negative or f.plus or f.space else 0)
    else:
        prec = 0
    digits = {10: "d", 16: "x", 8: "o", 2: "b"}[base]
    body = format(magnitude, digits)
    body = body.upper() if verb == "X" else body
    body = body.rjust(prec, "0")
    if f.sharp:
        if base == 2:
            body = "0b" + body
        elif base == 8 and not body.startswith("0"):
            body = "0" + body
        elif base == 16:
            body = ("0X" if verb == "X" else "0x") + body
    sign = "-" if negative else "+" if f.plus else " " if f.space else ""
    return _pad(_Fmt(minus=f.minus, wid=f.wid), sign + body)


def _print_int(f: _Fmt, value: int, verb: str) -> str:
    if verb in "vd":
        return _fmt_integer(f, value, 10, verb)
    if verb in "bo":
        return _fmt_integer(f, value, {"b": 2, "o": 8}[verb], verb)
    if verb in "xX":
        return _fmt_integer(f, value, 16, verb)
    if verb == "c":
        return _pad(_Fmt(minus=f.minus, wid=f.wid, zero=f.zero), _rune(value))
    if verb == "q":
        ch = _rune(value)
        return _pad(f, "'" + _quote_char(ch, "'", f.plus) + "'")
    if verb == "U":
        code = value if value >= 0 else value + 2**64
        text = "U+" + format(code, "X").rjust(max(4, f.prec or 0), "0")
        return _pad(_Fmt(minus=f.minus, wid=f.wid), text)
    return _bad_verb(f, value, verb)


def _print_float(f: _Fmt, value: float, verb: str) -> str:
    if verb not in "vfFeEgGxXb":
        return _bad_verb(f, value, verb)
    if f.sharp:
        raise GoFormatError(f"printf %#{verb} of a number is not reproduced by the converter")
    if value != value or value in (float("inf"), float("-inf")):
        text = go_float(value)
        text = text if (f.plus or text[0] != "+") else text[1:]
        if text == "NaN" and (f.plus or f.space):
            text = ("+" if f.plus else " ") + text
        return _pad(_Fmt(minus=f.minus, wid=f.wid), text)
    if verb == "b":
        text = _binary_float(value)
    elif verb in "xX":
        if f.prec is not None:
            raise GoFormatError("printf %x of a number with a precision is not reproduced")
        text = _hex_float(value)
        text = text.upper() if verb == "X" else text
    elif verb in "vgG" and f.prec is None:
        text = go_float(value)
        text = text.upper() if verb == "G" else text
    else:
        prec = 6 if f.prec is None else f.prec
        spec = "f" if verb == "F" else "g" if verb == "v" else verb
        text = format(value, f".{prec}{spec}")
        text = re.sub(r"([eE][+-])(\d)$", r"\g<1>0\2", text)
    sign = "-" if text.startswith("-") else "+"
    body = text.lstrip("-")
    if f.space and sign == "+" and not f.plus:
        sign = " "
    if f.plus or sign != "+":
        if f.zero and f.wid is not None and f.wid > len(body) + 1:
            return sign + _padding(f, f.wid - len(body) - 1) + body
        return _pad(f, sign + body)
    return _pad(f, body)


def _hex_float(value: float) -> str:
    """strconv.FormatFloat(value, 'x', -1, 64): 0x1.8p+00, normalised, shortest."""
    if value == 0:
        return ("-" if str(value).startswith("-") else "") + "0x0p+00"
    import math

    mantissa, exponent = math.frexp(abs(value))
    bits = int((mantissa * 2 - 1) * (1 << 52))
    digits = format(bits, "013x").rstrip("0")
    exp = exponent - 1
    return (f"{'-' if value < 0 else ''}0x1{'.' + digits if digits else ''}"
            f"p{'-' if exp < 0 else '+'}{abs(exp):02d}")


def _binary_float(value: float) -> str:
    """strconv.FormatFloat(value, 'b', -1, 64): the exact mantissa and power of two."""
    import math

    if value == 0:
        return ("-" if str(value).startswith("-") else "") + "0p-1074"
    exp = max(math.frexp(abs(value))[1] - 53, -1074)
    bits = int(math.ldexp(abs(value), -exp))
    return f"{'-' if value < 0 else ''}{bits}p{'-' if exp < 0 else '+'}{abs(exp)}"


def _print_string(f: _Fmt, value: str, verb: str) -> str:
    if verb in "vs":
        text = value if f.prec is None else value[:f.prec]
        return _pad(f, text)
    if verb == "q":
        text = value if f.prec is None else value[:f.prec]
        if f.sharp and "`" not in text and all(c == "\t" or (c.isprintable() and c != "\ufeff")
                                               for c in text):
            return _pad(f, "`" + text + "`")
        return _pad(f, _quote(text, ascii_only=f.plus))
    if verb in "xX":
        return _fmt_sx(f, value.encode(), verb)
    return _bad_verb(f, value, verb)


def _fmt_sx(f: _Fmt, data: bytes, verb: str) -> str:
    """Go's fmt.fmtSbx: hex of the bytes; ` ` separates bytes, `#` adds 0x (per byte with ` `)."""
    if f.prec is not None:
        data = data[:f.prec]
    if not data:
        return _padding(f, f.wid or 0)
    prefix = ("0X" if verb == "X" else "0x") if f.sharp else ""
    pieces = [format(b, "02X" if verb == "X" else "02x") for b in data]
    text = " ".join(prefix + p for p in pieces) if f.space else prefix + "".join(pieces)
    if f.wid is None or f.wid <= len(text):
        return text
    fill = _padding(f, f.wid - len(text))
    return text + fill if f.minus else fill + text


def _print_value(f: _Fmt, value: Any, verb: str, depth: int) -> str:
    """Go's printArg (depth 0) and printValue (inside a list, map or struct)."""
    if value is None:
        if depth > 0:
            return "<nil>"
        return _pad(f, "<nil>") if verb == "v" else f"%!{verb}(<nil>)"
    if isinstance(value, bool):
        if verb in "vt":
            return _pad(f, "true" if value else "false")
        return _bad_verb(f, value, verb)
    if isinstance(value, int):
        return _print_int(f, value, verb)
    if isinstance(value, float):
        return _print_float(f, value, verb)
    if isinstance(value, str):
        return _print_string(f, value, verb)
    if isinstance(value, dict):
        items = (_print_value(f, k, verb, depth + 1) + ":"
                 + _print_value(f, value[k], verb, depth + 1) for k in sorted(value))
        return "map[" + " ".join(items) + "]"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        names = [n[:1].upper() + n[1:] + ":" if f.plus_v else "" for n in value._fields]
        return "{" + " ".join(n + _print_value(f, v, verb, depth + 1)
                              for n, v in zip(names, value, strict=True)) + "}"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_print_value(f, v, verb, depth + 1) for v in value) + "]"
    if verb in "vs":
        return _pad(f, str(value))
    return _bad_verb(f, value, verb)


def _bad_verb(f: _Fmt, value: Any, verb: str) -> str:
    """`%!verb(type=value)`: the value as %v under the verb's own flags (Go's badVerb)."""
    return f"%!{verb}({_go_type(value)}={_print_value(f, value, 'v', 0)})"


def check_format(fmt: str) -> str | None:
    """The first verb in `fmt` the converter cannot reproduce (checked at conversion time)."""
    for match in VERB.finditer(fmt):
        flags, _, _, verb = match.groups()
        if verb and verb not in SUPPORTED_VERBS and verb.isalpha():
            return match.group()
        if "#" in flags and verb not in _SHARP_VERBS:
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
        if verb == "":
            out.append("%!(NOVERB)")
            continue
        if verb == "%":
            out.append("%")  # takes no operand, ignores width and precision (Go 1.19)
            continue
        if arg_index >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        plus = "+" in flags
        f = _Fmt(minus="-" in flags, plus=plus and verb != "v", sharp="#" in flags,
                 space=" " in flags, zero="0" in flags and "-" not in flags,
                 wid=int(width) if width else None,
                 prec=(int(prec) if prec else 0) if prec is not None else None,
                 plus_v=plus and verb == "v")
        if verb not in SUPPORTED_VERBS and verb.isalpha():  # %T, %p, ...: not reproduced
            raise GoFormatError(f"printf verb %{verb} is not supported by the converter")
        out.append(_print_value(f, args[arg_index], verb, 0))
        arg_index += 1
    out.append(fmt[pos:])
    if arg_index < len(args):
        extra = ", ".join("<nil>" if a is None else
                          f"{_go_type(a)}={_print_value(_Fmt(), a, 'v', 0)}"
                          for a in args[arg_index:])
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
    "go_reverse": go_reverse,
    "go_eq": go_eq,
    "go_ne": go_ne,
    "go_lt": go_lt,
    "go_le": go_le,
    "go_gt": go_gt,
    "go_ge": go_ge,
    "go_join": go_join,
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
