"""A parser for Go's text/template, the language of confd templates: text, actions, pipelines,
control structures and `define`/`block`, into a small AST with a line and column on every node.

It follows Go's own grammar (text/template/parse) closely enough that whatever Go accepts the
converter either translates or refuses by name and position: trim markers (`{{- ` / ` -}}`) are
applied to the neighbouring text here, exactly as Go's lexer does, so the emitter sees the text
Go would output.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field


class GoTemplateError(Exception):
    """A construct that cannot be parsed or translated, with its position."""

    def __init__(self, filename: str, line: int, col: int, message: str) -> None:
        self.filename, self.line, self.col, self.message = filename, line, col, message
        super().__init__(f"{filename}:{line}:{col}: {message}")


@dataclass(frozen=True)
class Pos:
    line: int
    col: int


# ---- expressions -------------------------------------------------------------------------

@dataclass
class Dot:
    pos: Pos


@dataclass
class Nil:
    pos: Pos


@dataclass
class Bool:
    pos: Pos
    value: bool


@dataclass
class Number:
    pos: Pos
    value: int | float
    text: str


@dataclass
class String:
    pos: Pos
    value: str


@dataclass
class Variable:
    """`$x.a.b`: a variable, possibly followed by fields."""

    pos: Pos
    name: str  # "$" or "$x"
    fields: list[str] = field(default_factory=list)


@dataclass
class Field:
    """`.a.b`: fields of the dot."""

    pos: Pos
    fields: list[str]


@dataclass
class Identifier:
    """A function name."""

    pos: Pos
    name: str


@dataclass
class Chain:
    """`(pipeline).a.b` or `ident.a` (a function's result, then fields)."""

    pos: Pos
    node: Operand
    fields: list[str]


@dataclass
class Command:
    pos: Pos
    args: list[Operand]


@dataclass
class Pipeline:
    pos: Pos
    decls: list[str]  # "$x" names being declared or assigned
    is_assign: bool  # `=` rather than `:=`
    cmds: list[Command]


Operand = Dot | Nil | Bool | Number | String | Variable | Field | Identifier | Chain | Pipeline


# ---- template nodes ----------------------------------------------------------------------

@dataclass
class Text:
    pos: Pos
    text: str


@dataclass
class Action:
    pos: Pos
    pipe: Pipeline


@dataclass
class Comment:
    pos: Pos
    text: str


@dataclass
class If:
    pos: Pos
    pipe: Pipeline
    body: list[Node]
    orelse: list[Node] | None


@dataclass
class Range:
    pos: Pos
    pipe: Pipeline
    body: list[Node]
    orelse: list[Node] | None


@dataclass
class With:
    pos: Pos
    pipe: Pipeline
    body: list[Node]
    orelse: list[Node] | None


@dataclass
class TemplateCall:
    pos: Pos
    name: str
    pipe: Pipeline | None


@dataclass
class LoopControl:
    pos: Pos
    keyword: str  # break | continue


Node = Text | Action | Comment | If | Range | With | TemplateCall | LoopControl


@dataclass
class ParsedTemplate:
    filename: str
    body: list[Node]
    defines: dict[str, list[Node]]
    define_pos: dict[str, Pos]


# ---- lexing ------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<declare>:=)
  | (?P<raw>`[^`]*`)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<number>[+-]?(?:0[xX](?:[0-9a-fA-F_]+\.?[0-9a-fA-F_]*|\.[0-9a-fA-F_]+)[pP][+-]?[0-9_]+
        |0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+
        |(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?)i?)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<variable>\$[A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()|=,])
""", re.VERBOSE)


@dataclass
class _Token:
    kind: str
    text: str
    pos: Pos


@dataclass
class _Segment:
    """A piece of the file: text, or one action's tokens."""

    pos: Pos
    text: str | None = None
    tokens: list[_Token] = field(default_factory=list)
    comment: str | None = None


class _Lexer:
    def __init__(self, filename: str, source: str) -> None:
        self.filename = filename
        self.source = source
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", source)]

    def pos(self, offset: int) -> Pos:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return Pos(lo + 1, offset - self._line_starts[lo] + 1)

    def fail(self, offset: int, message: str) -> GoTemplateError:
        p = self.pos(offset)
        return GoTemplateError(self.filename, p.line, p.col, message)

    def segments(self) -> list[_Segment]:
        src = self.source
        out: list[_Segment] = []
        i = 0
        trim_next = False
        while i <= len(src):
            start = src.find("{{", i)
            text_end = len(src) if start < 0 else start
            text = src[i:text_end]
            if trim_next:
                text = text.lstrip(_SPACE)
            trim_left = (start >= 0 and src.startswith("{{- ", start)) or any(
                start >= 0 and src.startswith("{{-" + c, start) for c in "\t\r\n")
            if trim_left:
                text = text.rstrip(_SPACE)
            if text:
                out.append(_Segment(self.pos(i), text=text))
            if start < 0:
                break
            body = start + (3 if trim_left else 2)
            seg, i, trim_next = self._action(start, body)
            out.append(seg)
        return out

    def _action(self, start: int, body: int) -> tuple[_Segment, int, bool]:
        src = self.source
        seg = _Segment(self.pos(start))
        j = body
        while j < len(src) and src[j] in _SPACE:
            j += 1
        if src.startswith("/*", j):
            end = src.find("*/", j + 2)
            if end < 0:
                raise self.fail(start, "unclosed comment")
            seg.comment = src[j + 2:end]
            k = end + 2
            if src.startswith(" -}}", k) or any(src.startswith(c + "-}}", k) for c in "\t\r\n"):
                return seg, k + 4, True
            if src.startswith("}}", k):
                return seg, k + 2, False
            raise self.fail(start, "comment ends before closing delimiter")
        i = body
        while True:
            if i >= len(src):
                raise self.fail(start, "unclosed action")
            if src.startswith("}}", i):
                return seg, i + 2, False
            if src[i] in _SPACE:
                k = i
                while k < len(src) and src[k] in _SPACE:
                    k += 1
                if src.startswith("-}}", k):
                    return seg, k + 3, True
            if src.startswith("/*", i):
                raise self.fail(i, "comment inside an action (Go allows comments only alone)")
            m = _TOKEN.match(src, i)
            if m is None or m.end() == i:
                raise self.fail(i, f"unexpected {src[i]!r} in action")
            kind = m.lastgroup or ""
            if kind != "space":
                seg.tokens.append(_Token(kind, m.group(), self.pos(i)))
            i = m.end()


# ---- literal decoding --------------------------------------------------------------------

_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\"}
_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}


def _pieces(body: str, quote: str) -> list[int | bytes]:
    """Go's strconv.UnquoteChar over a literal's body: code points (ints) and, for `\\xNN` and
    octal escapes, single bytes. Raises ValueError where Go refuses the literal: an unknown
    escape, the other quote escaped, too few digits, a surrogate or a code point past
    U+10FFFF, an octal value past 0377."""
    out: list[int | bytes] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(ord(c))
            i += 1
            continue
        e = body[i + 1:i + 2]
        if e in _ESCAPES:
            out.append(ord(_ESCAPES[e]))
            i += 2
        elif e == quote:
            out.append(ord(e))
            i += 2
        elif e in _HEX_WIDTH:
            digits = body[i + 2:i + 2 + _HEX_WIDTH[e]]
            if len(digits) != _HEX_WIDTH[e] or not all(d in string.hexdigits for d in digits):
                raise ValueError(f"\\{e} needs {_HEX_WIDTH[e]} hex digits")
            value = int(digits, 16)
            if e == "x":
                out.append(bytes([value]))
            elif value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise ValueError(f"\\{e}{digits} is not a valid code point")
            else:
                out.append(value)
            i += 2 + _HEX_WIDTH[e]
        elif e and e in "01234567":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) \
                    or int(digits, 8) > 0o377:
                raise ValueError(f"octal escape \\{digits} (needs three digits, at most \\377)")
            out.append(bytes([int(digits, 8)]))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{e}")
    return out


def _unquote(body: str) -> str:
    """A double-quoted literal's value. `\\xNN` and octal escapes are bytes in Go ("\\xc3\\xa9" is
    "é"); text that is not UTF-8 is refused: confsync writes text."""
    data = b"".join(p if isinstance(p, bytes) else chr(p).encode() for p in _pieces(body, '"'))
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"bytes that are not UTF-8 ({data!r}; refused: confsync writes "
                         "text)") from None


def _char(body: str) -> int:
    """A character literal's value: one code point, or the byte value of `\\xNN`/octal."""
    pieces = _pieces(body, "'")
    if len(pieces) != 1:
        raise ValueError("not exactly one character")
    only = pieces[0]
    return only[0] if isinstance(only, bytes) else only


def _number(text: str) -> int | float:
    clean = text.replace("_", "")
    if clean.endswith("i"):
        raise ValueError("complex numbers")
    try:
        return int(clean, 0)
    except ValueError:
        pass
    if re.fullmatch(r"[+-]?0[0-7]+", clean):
        return int(clean, 8)
    try:
        # a hex float, 0x1p-2, when it starts 0x (the lexer saw its p exponent)
        value = float.fromhex(clean) if re.match(r"[+-]?0[xX]", clean) else float(clean)
    except OverflowError:
        value = float("inf")
    if value in (float("inf"), float("-inf")):
        # Go: "... out of range" when the template is parsed (Python would emit `inf`)
        raise ValueError("out of range of float64")
    return value


# ---- parsing -----------------------------------------------------------------------------

_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break",
             "continue"}


class Parser:
    def __init__(self, filename: str, source: str) -> None:
        self.filename = filename
        self.lexer = _Lexer(filename, source)
        self.segments = self.lexer.segments()
        self.index = 0
        self.defines: dict[str, list[Node]] = {}
        self.define_pos: dict[str, Pos] = {}
        # ranges open around the action being parsed (Go's Tree.rangeDepth): {{break}} and
        # {{continue}} outside one are refused when parsed, even in a define never called
        self.range_depth = 0

    def fail(self, pos: Pos, message: str) -> GoTemplateError:
        return GoTemplateError(self.filename, pos.line, pos.col, message)

    def parse(self) -> ParsedTemplate:
        body, end = self._list(top=True)
        if end is not None:
            raise self.fail(end[0].pos, f"unexpected {{{{{end[1]}}}}}")
        return ParsedTemplate(self.filename, body, self.defines, self.define_pos)

    def _list(self, top: bool = False, opener: tuple[Pos, str] | None = None
              ) -> tuple[list[Node], tuple[_Segment, str] | None]:
        """Nodes up to an `end` or `else` (returned, with which), or to the end of the file."""
        nodes: list[Node] = []
        while self.index < len(self.segments):
            seg = self.segments[self.index]
            self.index += 1
            if seg.text is not None:
                nodes.append(Text(seg.pos, seg.text))
                continue
            if seg.comment is not None:
                nodes.append(Comment(seg.pos, seg.comment))
                continue
            toks = seg.tokens
            if not toks:
                raise self.fail(seg.pos, "missing value for command")
            head = toks[0]
            word = head.text if head.kind == "ident" and head.text in _KEYWORDS else None
            if word in ("end", "else"):
                if top:
                    raise self.fail(seg.pos, f"unexpected {{{{{word}}}}}")
                return nodes, (seg, word)
            if word in ("if", "range", "with"):
                nodes.append(self._control(seg, word))
            elif word in ("define", "block"):
                node = self._define(seg, word, top)
                if node is not None:
                    nodes.append(node)
            elif word == "template":
                name, pipe = self._template_args(seg, toks[1:])
                nodes.append(TemplateCall(seg.pos, name, pipe))
            elif word in ("break", "continue"):
                nodes.append(self._loop_control(seg, word))
            else:
                nodes.append(Action(seg.pos, _PipeParser(self, seg.pos, toks).pipeline(True)))
        if not top:
            pos, word = opener or (Pos(1, 1), "action")
            raise self.fail(pos, f"unexpected EOF: this {{{{{word}}}}} has no {{{{end}}}}")
        return nodes, None

    def _loop_control(self, seg: _Segment, word: str) -> LoopControl:
        # Go 1.19's checks, in its order (parse.go breakControl/continueControl)
        if len(seg.tokens) != 1:
            raise self.fail(seg.pos, f"unexpected \"{seg.tokens[1].text}\" in {{{{{word}}}}}")
        if self.range_depth == 0:
            raise self.fail(seg.pos, f"{{{{{word}}}}} outside {{{{range}}}}")
        return LoopControl(seg.pos, word)

    def _control(self, seg: _Segment, word: str) -> Node:
        pipe = _PipeParser(self, seg.pos, seg.tokens[1:]).pipeline(True, allow_range=word)
        # only the body is inside the range: Go refuses a break in its {{else}}
        depth = self.range_depth
        self.range_depth += word == "range"
        try:
            body, end = self._list(opener=(seg.pos, word))
        finally:
            self.range_depth = depth
        assert end is not None
        orelse: list[Node] | None = None
        end_seg, kind = end
        if kind == "else":
            rest = end_seg.tokens[1:]
            if rest:
                nested_word = rest[0].text
                # `else with` is Go 1.23's; confd's Go (1.19) refuses the template
                if word in ("range", "with") or nested_word != word:
                    raise self.fail(end_seg.pos, f"{{{{else {nested_word}}}}} inside {word} "
                                    f"(refused: not supported)")
                # `else if` / `else with`: a nested control that shares our {{end}}
                self.index -= 1
                self.segments[self.index] = _Segment(end_seg.pos, tokens=rest)
                nested = self._control_shared_end(word)
                orelse = [nested]
            else:
                orelse, end2 = self._list(opener=(seg.pos, word))
                assert end2 is not None
                if end2[1] != "end":
                    raise self.fail(end2[0].pos, "expected {{end}}")
        if word == "if":
            return If(seg.pos, pipe, body, orelse)
        if word == "range":
            return Range(seg.pos, pipe, body, orelse)
        return With(seg.pos, pipe, body, orelse)

    def _control_shared_end(self, word: str) -> Node:
        seg = self.segments[self.index]
        self.index += 1
        return self._control(seg, word)

    def _define(self, seg: _Segment, word: str, top: bool) -> Node | None:
        toks = seg.tokens[1:]
        if word == "define":
            if not top:
                raise self.fail(seg.pos, "define is allowed only at the top level")
            if len(toks) != 1 or toks[0].kind not in ("string", "raw"):
                raise self.fail(seg.pos, "define needs one quoted name")
            name = self._name(toks[0])
            pipe = None
        else:
            name, pipe = self._template_args(seg, toks)
        # Go parses a define's or a block's body as a tree of its own, outside any range
        depth, self.range_depth = self.range_depth, 0
        try:
            body, end = self._list(opener=(seg.pos, word))
        finally:
            self.range_depth = depth
        assert end is not None
        if end[1] != "end":
            raise self.fail(end[0].pos, f"unexpected {{{{else}}}} in {word}")
        if name in self.defines and any(not isinstance(n, Text) or n.text.strip()
                                        for n in self.defines[name]):
            if word == "block" or any(not isinstance(n, Text) or n.text.strip() for n in body):
                raise self.fail(seg.pos, f"template {name!r} defined twice")
        else:
            self.defines[name] = body
            self.define_pos[name] = seg.pos
        return TemplateCall(seg.pos, name, pipe) if word == "block" else None

    def _template_args(self, seg: _Segment, toks: list[_Token]) -> tuple[str, Pipeline | None]:
        if not toks or toks[0].kind not in ("string", "raw"):
            raise self.fail(seg.pos, "template needs a quoted name")
        name = self._name(toks[0])
        pipe = _PipeParser(self, seg.pos, toks[1:]).pipeline(False) if len(toks) > 1 else None
        return name, pipe


    def _name(self, tok: _Token) -> str:
        """A define/template/block name: a string literal, checked as Go checks one."""
        try:
            return _string_value(tok.text)
        except ValueError as exc:
            raise self.fail(tok.pos, f"bad template name {tok.text}: {exc}") from None


def _string_value(text: str) -> str:
    return text[1:-1] if text.startswith("`") else _unquote(text[1:-1])


class _PipeParser:
    def __init__(self, parser: Parser, pos: Pos, tokens: list[_Token]) -> None:
        self.parser = parser
        self.pos = pos
        self.tokens = tokens
        self.i = 0

    def fail(self, pos: Pos, message: str) -> GoTemplateError:
        return self.parser.fail(pos, message)

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def pipeline(self, allow_decl: bool, allow_range: str = "", end: str = "") -> Pipeline:
        decls: list[str] = []
        is_assign = False
        start = self.i
        if allow_decl:
            names: list[str] = []
            j = self.i
            while j < len(self.tokens) and self.tokens[j].kind == "variable":
                names.append(self.tokens[j].text)
                if j + 1 < len(self.tokens) and self.tokens[j + 1].text == "," \
                        and allow_range == "range" and len(names) == 1:
                    j += 2
                    continue
                j += 1
                break
            if names and j < len(self.tokens) and self.tokens[j].kind in ("declare", "punct") \
                    and self.tokens[j].text in (":=", "="):
                decls = names
                is_assign = self.tokens[j].text == "="
                self.i = j + 1
            else:
                self.i = start
        pos = self.tokens[self.i].pos if self.i < len(self.tokens) else self.pos
        cmds: list[Command] = []
        while True:
            cmds.append(self.command(end))
            tok = self.peek()
            if tok is None or (end and tok.text == end):
                break
            if tok.text == "|":
                self.i += 1
                continue
            raise self.fail(tok.pos, f"unexpected {tok.text!r} in pipeline")
        return Pipeline(pos, decls, is_assign, cmds)

    def command(self, end: str) -> Command:
        args: list[Operand] = []
        tok = self.peek()
        pos = tok.pos if tok else self.pos
        while True:
            tok = self.peek()
            if tok is None or tok.text == "|" or (end and tok.text == end):
                break
            args.append(self.operand())
        if not args:
            raise self.fail(pos, "missing value for command")
        return Command(pos, args)

    def operand(self) -> Operand:
        tok = self.tokens[self.i]
        self.i += 1
        node: Operand
        if tok.kind == "punct" and tok.text == "(":
            inner = self.pipeline(True, end=")")
            closing = self.peek()
            if closing is None or closing.text != ")":
                raise self.fail(tok.pos, "unclosed left paren")
            self.i += 1
            node = inner
        elif tok.kind == "field":
            return Field(tok.pos, tok.text.split(".")[1:])
        elif tok.kind == "dot":
            node = Dot(tok.pos)
        elif tok.kind == "variable":
            node = Variable(tok.pos, tok.text)
        elif tok.kind == "ident":
            if tok.text in ("true", "false"):
                node = Bool(tok.pos, tok.text == "true")
            elif tok.text == "nil":
                node = Nil(tok.pos)
            elif tok.text in _KEYWORDS:
                raise self.fail(tok.pos, f"unexpected keyword {tok.text!r} in operand")
            else:
                node = Identifier(tok.pos, tok.text)
        elif tok.kind in ("string", "raw"):
            try:
                node = String(tok.pos, _string_value(tok.text))
            except ValueError as exc:
                raise self.fail(tok.pos, f"bad string literal {tok.text}: {exc}") from None
        elif tok.kind == "char":
            try:
                value = _char(tok.text[1:-1])
            except ValueError as exc:
                raise self.fail(tok.pos, f"bad character literal {tok.text}: {exc}") from None
            node = Number(tok.pos, value, tok.text)
        elif tok.kind == "number":
            try:
                node = Number(tok.pos, _number(tok.text), tok.text)
            except ValueError as exc:
                raise self.fail(tok.pos, f"number {tok.text} (refused: {exc})") from None
            if isinstance(node.value, int) and not -(2**63) <= node.value < 2**63:
                # Go: "... overflows int" when the template runs (Python would print it)
                raise self.fail(tok.pos, f"number {tok.text} overflows int")
        else:
            raise self.fail(tok.pos, f"unexpected {tok.text!r}")
        nxt = self.peek()
        prev = self.tokens[self.i - 1]
        adjacent = nxt is not None and nxt.pos.line == prev.pos.line \
            and nxt.pos.col == prev.pos.col + len(prev.text)
        if nxt is not None and nxt.kind == "field" and adjacent:
            self.i += 1
            fields = nxt.text.split(".")[1:]
            if isinstance(node, Variable):
                node.fields = fields
                return node
            return Chain(tok.pos, node, fields)
        return node


def parse(filename: str, source: str) -> ParsedTemplate:
    """Parse a whole template file; raises GoTemplateError naming file:line:col."""
    return Parser(filename, source).parse()
