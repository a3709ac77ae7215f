"""Emit Jinja2 from a parsed Go template so that confsync's environment renders the same bytes.

Whitespace: Go's trim markers were applied by the parser; Jinja's `trim_blocks`/`lstrip_blocks`
are neutralised per tag (`{%+` only where a tag follows indentation, `+%}` only where a newline
follows it), and text that Jinja would read as syntax (`{{`, `{%`, `{#`) or normalise (`\\r`) is
emitted as expressions. Values: Go's dot becomes a named loop/with variable, `$x` a Jinja
variable (a `namespace` when a loop assigns to it), and where Python and Go differ (printing,
`len`, `index`, `printf`, JSON numbers) the output calls a `go_*` helper from runtime.py.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from confsync.convert import gotemplate as g
from confsync.convert.runtime import check_format

_TAG_END = "\ue000"
_COMMENT_END = "\ue001"

# confd function -> (Jinja callable, result type). Types steer printing and field access only.
_FUNCS: dict[str, tuple[str, str]] = {
    "getv": ("getv", "str"), "get": ("get", "kv"), "gets": ("gets", "list_kv"),
    "getvs": ("getvs", "list_str"), "exists": ("exists", "bool"), "ls": ("ls", "list_str"),
    "lsdir": ("lsdir", "list_str"), "json": ("go_json", "map"),
    "jsonArray": ("go_json_array", "list"), "base": ("base", "str"), "dir": ("dir", "str"),
    "split": ("split", "list_str"), "join": ("go_join", "str"), "map": ("map", "map"),
    "getenv": ("getenv", "str"), "datetime": ("datetime", "time"), "toUpper": ("toUpper", "str"),
    "toLower": ("toLower", "str"), "contains": ("contains", "bool"),
    "replace": ("replace", "str"), "trimSuffix": ("trimSuffix", "str"),
    "trimPrefix": ("trimPrefix", "str"), "lookupIP": ("lookupIP", "list_str"),
    "lookupIPV4": ("lookupIPV4", "list_str"), "lookupIPV6": ("lookupIPV6", "list_str"),
    "lookupSRV": ("lookupSRV", "list_srv"), "fileExists": ("fileExists", "bool"),
    "base64Encode": ("base64Encode", "str"), "base64Decode": ("base64Decode", "str"),
    "parseBool": ("parseBool", "bool"), "reverse": ("go_reverse", "same"),
    "sortByLength": ("sortByLength", "list_str"), "sortKVByLength": ("sortKVByLength", "list_kv"),
    "add": ("add", "int"), "sub": ("sub", "int"), "div": ("div", "int"), "mod": ("mod", "int"),
    "mul": ("mul", "int"), "seq": ("seq", "list_int"), "atoi": ("atoi", "int"),
    "hostname": ("hostname", "str"), "lookupIfaceIPV4": ("lookupIfaceIPV4", "str"),
    "lookupIfaceIPV6": ("lookupIfaceIPV6", "str"), "toJson": ("toJson", "str"),
    "sha256sum": ("sha256sum", "str"),
    "printf": ("go_printf", "str"), "print": ("go_print", "str"), "html": ("go_html", "str"),
    "urlquery": ("go_urlquery", "str"),
}
_REFUSED_FUNCS = {
    "call": "call (functions held in data) has no Jinja counterpart",
    "js": "js escaping is not reproduced",
    "slice": "slice is not reproduced",
}
_ELEMENT = {"list_kv": "kv", "list_str": "str", "list_int": "int", "list_srv": "srv"}
_FIELDS = {"kv": {"Key": ("key", "str"), "Value": ("value", "str")},
           "srv": {"Target": ("Target", "str"), "Port": ("Port", "int"),
                   "Priority": ("Priority", "int"), "Weight": ("Weight", "int")},
           "time": {"Format": ("Format", "str"), "Unix": ("Unix", "int"),
                    "UTC": ("UTC", "time")}}
_RESERVED = set(keyword.kwlist) | {
    "true", "false", "none", "loop", "self", "super", "varargs", "kwargs", "caller",
    "namespace", "range", "dict", "lipsum", "cycler", "joiner", "in", "is", "not", "and", "or",
    "json", "fromjson", "multiline"} | {name for name, _ in _FUNCS.values()} | set(_FUNCS)
_DICT_ATTRS = set(dir(dict))
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PRINTS_AS_IS = ("str", "int")


@dataclass
class _Var:
    jname: str
    type: str
    depth: int  # for-loop depth where it was declared
    serial: int
    ns: bool = False


@dataclass
class _Ctx:
    dot: str  # Jinja expression for Go's dot
    dot_type: str


@dataclass
class _Result:
    code: str
    type: str


@dataclass
class _State:
    out: list[str] = field(default_factory=list)
    scopes: list[dict[str, _Var]] = field(default_factory=list)
    depth: int = 0
    serial: int = 0
    inlining: list[str] = field(default_factory=list)
    barrier: int = 0  # scopes below this index belong to the caller of an inlined template


def _literal(text: str) -> str:
    """A Jinja string literal holding exactly `text`, ASCII only, no raw control characters."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 32 <= code < 127:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


class Emitter:
    def __init__(self, parsed: g.ParsedTemplate) -> None:
        self.parsed = parsed
        self.ns_serials: set[int] = set()

    def emit(self) -> str:
        # Pass 1 finds variables a loop assigns to (they need a namespace); pass 2 writes.
        for _ in range(2):
            before = set(self.ns_serials)
            state = _State(scopes=[{"$": _Var("none", "nil", 0, -1)}])
            self.s = state
            self._nodes(self.parsed.body, _Ctx("none", "nil"))
            if self.ns_serials == before:
                break
        return self._finish("".join(self.s.out))

    # ---- helpers ----------------------------------------------------------------------

    def fail(self, pos: g.Pos, message: str) -> g.GoTemplateError:
        return g.GoTemplateError(self.parsed.filename, pos.line, pos.col, message)

    @staticmethod
    def _finish(text: str) -> str:
        text = re.sub(_TAG_END + "(?=\n)", "+%}", text)
        text = re.sub(_COMMENT_END + "(?=\n)", "+#}", text)
        return text.replace(_TAG_END, "%}").replace(_COMMENT_END, "#}")

    def _needs_lstrip_guard(self) -> bool:
        tail: list[str] = []
        for chunk in reversed(self.s.out):
            nl = chunk.rfind("\n")
            if nl >= 0:
                tail.append(chunk[nl + 1:])
                break
            tail.append(chunk)
        line = "".join(reversed(tail))
        return bool(line) and line.strip(" \t") == ""

    def tag(self, body: str) -> None:
        opener = "{%+ " if self._needs_lstrip_guard() else "{% "
        self.s.out.append(f"{opener}{body} {_TAG_END}")

    def text(self, text: str) -> None:
        out: list[str] = []
        for i, ch in enumerate(text):
            nxt = text[i + 1] if i + 1 < len(text) else ""
            # a "{" before anything written as an expression below (or before the next tag)
            # would open a Jinja tag with it: `{\r` became `{{{ "\r" ...` and failed to compile
            if ch == "{" and (nxt in "{%#\r" + _TAG_END + _COMMENT_END or nxt == ""):
                out.append('{{ "{" }}')
            elif ch == "\r":
                out.append('{{ "\\r" | multiline }}')
            elif ch in (_TAG_END, _COMMENT_END):
                # our own tag-end markers (replaced by `%}`/`#}` in _finish): written as an
                # expression, as ASCII escapes, so that the text keeps its bytes
                out.append(f"{{{{ {_literal(ch)} }}}}")
            else:
                out.append(ch)
        self.s.out.append("".join(out))

    def comment(self, text: str) -> None:
        """A Go comment as an inert Jinja comment. Its text can neither end the comment early
        (`#}`, or U+E001, which _finish turns into `#}`: the rest would run as Jinja code) nor
        act as a whitespace control: a space keeps a leading `-`/`+` from reading as `{#-`
        and a trailing `-` from reading as `-#}`."""
        for marker in ("#}", _TAG_END, _COMMENT_END):
            text = text.replace(marker, " ")
        if text[:1] in ("-", "+"):
            text = " " + text
        if text[-1:] in ("-", "+"):
            text += " "
        opener = "{#+" if self._needs_lstrip_guard() else "{#"
        self.s.out.append(f"{opener}{text}{_COMMENT_END}")

    def lookup(self, name: str, pos: g.Pos) -> _Var:
        for scope in reversed(self.s.scopes[self.s.barrier:]):
            if name in scope:
                return scope[name]
        raise self.fail(pos, f"undefined variable {name}")

    def _visible_jnames(self) -> set[str]:
        return {v.jname for scope in self.s.scopes for v in scope.values()}

    def fresh(self, base: str) -> str:
        base = base if _IDENT.match(base) else "v"
        if base in _RESERVED or base.startswith("go_"):
            base = "v_" + base
        visible = self._visible_jnames()
        name, n = base, 2
        while name in visible:
            name, n = f"{base}{n}", n + 1
        return name

    def declare(self, go_name: str, type_: str) -> _Var:
        serial = self.s.serial
        self.s.serial += 1
        var = _Var(self.fresh(go_name.lstrip("$") or "root"), type_, self.s.depth, serial,
                   ns=serial in self.ns_serials)
        self.s.scopes[-1][go_name] = var
        return var

    @contextmanager
    def scope(self) -> Iterator[None]:
        self.s.scopes.append({})
        try:
            yield
        finally:
            self.s.scopes.pop()

    @staticmethod
    def ref(var: _Var) -> str:
        return f"{var.jname}.v" if var.ns else var.jname

    # ---- nodes ------------------------------------------------------------------------

    def _nodes(self, nodes: list[g.Node], ctx: _Ctx) -> None:
        for node in nodes:
            self._node(node, ctx)

    def _node(self, node: g.Node, ctx: _Ctx) -> None:
        if isinstance(node, g.Text):
            self.text(node.text)
        elif isinstance(node, g.Comment):
            self.comment(node.text)
        elif isinstance(node, g.Action):
            self._action(node, ctx)
        elif isinstance(node, g.If):
            self._if(node, ctx, "if")
        elif isinstance(node, g.Range):
            self._range(node, ctx)
        elif isinstance(node, g.With):
            self._with(node, ctx)
        elif isinstance(node, g.TemplateCall):
            self._template(node, ctx)
        else:
            raise self.fail(node.pos, f"{{{{{node.keyword}}}}} (refused: Jinja's loop controls "
                            "are not enabled in confsync's environment)")

    def _declare_pipe(self, pipe: g.Pipeline, value: _Result) -> None:
        if len(pipe.decls) != 1:
            raise self.fail(pipe.pos, "too many declarations")
        name = pipe.decls[0]
        if pipe.is_assign:
            var = self.lookup(name, pipe.pos)
            if var.depth < self.s.depth:
                self.ns_serials.add(var.serial)
            if var.ns:
                self.tag(f"set {var.jname}.v = {value.code}")
            else:
                self.tag(f"set {var.jname} = {value.code}")
            var.type = var.type if var.type == value.type else "any"
            return
        var = self.declare(name, value.type)
        if var.ns:
            self.tag(f"set {var.jname} = namespace(v={value.code})")
        else:
            self.tag(f"set {var.jname} = {value.code}")

    def _action(self, node: g.Action, ctx: _Ctx) -> None:
        pipe = node.pipe
        last = pipe.cmds[-1]
        head = last.args[0]
        if not pipe.decls and isinstance(head, g.Identifier) and head.name == "println":
            args = [self.operand(a, ctx) for a in last.args[1:]]
            if len(pipe.cmds) > 1:
                args.append(self.pipeline(g.Pipeline(pipe.pos, [], False, pipe.cmds[:-1]), ctx))
            self.s.out.append(f"{{{{ go_print_spaced({', '.join(a.code for a in args)}) }}}}")
            self.text("\n")
            return
        value = self.pipeline(g.Pipeline(pipe.pos, [], False, pipe.cmds), ctx)
        if pipe.decls:
            self._declare_pipe(pipe, value)
        elif value.type in _PRINTS_AS_IS:
            self.s.out.append(f"{{{{ {value.code} }}}}")
        else:
            self.s.out.append(f"{{{{ {value.code} | go_str }}}}")

    def _condition(self, pipe: g.Pipeline, ctx: _Ctx) -> _Result:
        value = self.pipeline(g.Pipeline(pipe.pos, [], False, pipe.cmds), ctx)
        if pipe.decls:
            if len(pipe.decls) != 1 or pipe.is_assign:
                raise self.fail(pipe.pos, "only `$x := pipeline` may open if/with")
            self._declare_pipe(pipe, value)
            var = self.lookup(pipe.decls[0], pipe.pos)
            return _Result(self.ref(var), var.type)
        return value

    def _if(self, node: g.If, ctx: _Ctx, opener: str) -> None:
        with self.scope():
            cond = self._condition(node.pipe, ctx)
            self.tag(f"{opener} {cond.code}")
            with self.scope():
                self._nodes(node.body, ctx)
            if node.orelse is not None:
                only = node.orelse[0] if len(node.orelse) == 1 else None
                if isinstance(only, g.If) and not only.pipe.decls:
                    self._if(only, ctx, "elif")
                else:
                    self.tag("else")
                    with self.scope():
                        self._nodes(node.orelse, ctx)
        if opener == "if":
            self.tag("endif")

    def _with(self, node: g.With, ctx: _Ctx) -> None:
        with self.scope():
            if node.pipe.decls:
                value = self._condition(node.pipe, ctx)
            else:
                raw = self.pipeline(node.pipe, ctx)
                if _IDENT.match(raw.code):
                    value = raw
                else:
                    var = self.declare("$with", raw.type)
                    self.tag(f"set {var.jname} = {raw.code}")
                    value = _Result(var.jname, raw.type)
            self.tag(f"if {value.code}")
            with self.scope():
                self._nodes(node.body, _Ctx(value.code, value.type))
            if node.orelse is not None:
                self.tag("else")
                with self.scope():
                    self._nodes(node.orelse, ctx)
            self.tag("endif")

    def _range(self, node: g.Range, ctx: _Ctx) -> None:
        pipe = node.pipe
        if pipe.is_assign:
            raise self.fail(pipe.pos, "range with `=` assignment (refused: not supported)")
        seq = self.pipeline(g.Pipeline(pipe.pos, [], False, pipe.cmds), ctx)
        known_list = seq.type in _ELEMENT or seq.type == "list"
        element = _ELEMENT.get(seq.type, "any")
        with self.scope():
            self.s.depth += 1
            if len(pipe.decls) == 2:
                key_type = "int" if known_list else "any"
                k = self.declare(pipe.decls[0], key_type)
                v = self.declare(pipe.decls[1], element)
                k.ns = v.ns = False
                header = f"for {k.jname}, {v.jname} in go_items({seq.code})"
                dot = _Result(v.jname, element)
            else:
                if pipe.decls:
                    v = self.declare(pipe.decls[0], element)
                    v.ns = False
                    name = v.jname
                else:
                    name = self.fresh({"kv": "kv", "str": "item", "srv": "srv"}.get(
                        element, "item"))
                    self.s.scopes[-1][f" dot{name}"] = _Var(name, element, self.s.depth, -1)
                source = seq.code if known_list else f"go_values({seq.code})"
                header = f"for {name} in {source}"
                dot = _Result(name, element)
            self.s.depth -= 1
            self.tag(header)
            self.s.depth += 1
            with self.scope():
                self._nodes(node.body, _Ctx(dot.code, dot.type))
            self.s.depth -= 1
        if node.orelse is not None:
            self.tag("else")
            with self.scope():
                self._nodes(node.orelse, ctx)
        self.tag("endfor")

    def _template(self, node: g.TemplateCall, ctx: _Ctx) -> None:
        body = self.parsed.defines.get(node.name)
        if body is None:
            raise self.fail(node.pos, f"template {node.name!r} is not defined in this file")
        if node.name in self.s.inlining:
            raise self.fail(node.pos, f"template {node.name!r} calls itself (refused: "
                            "recursive templates are not converted)")
        saved, saved_barrier = self.s.scopes, self.s.barrier
        if node.pipe is not None:
            value = self.pipeline(node.pipe, ctx)
            if not _IDENT.match(value.code) and value.code != "none":
                var = self.declare(f"${node.name}", value.type)
                self.tag(f"set {var.jname} = {value.code}")
                value = _Result(var.jname, value.type)
        else:
            value = _Result("none", "nil")
        # The called template sees none of the caller's variables, only its own and `$`; the
        # caller's names stay reserved (they are alive in the same Jinja scope).
        self.s.scopes = [*saved, {"$": _Var(value.code, value.type, self.s.depth, -1)}]
        self.s.barrier = len(saved)
        self.s.inlining.append(node.name)
        try:
            self._nodes(body, _Ctx(value.code, value.type))
        finally:
            self.s.inlining.pop()
            self.s.scopes, self.s.barrier = saved, saved_barrier

    # ---- expressions ------------------------------------------------------------------

    def pipeline(self, pipe: g.Pipeline, ctx: _Ctx) -> _Result:
        if pipe.decls:
            raise self.fail(pipe.pos, "declaration inside a parenthesised pipeline "
                            "(refused: not supported)")
        result: _Result | None = None
        for cmd in pipe.cmds:
            result = self.command(cmd, ctx, result)
        assert result is not None
        return result

    def command(self, cmd: g.Command, ctx: _Ctx, piped: _Result | None) -> _Result:
        head, rest = cmd.args[0], cmd.args[1:]
        if isinstance(head, g.Identifier):
            if head.name in _REFUSED_FUNCS:
                raise self.fail(head.pos, f"{head.name} (refused: {_REFUSED_FUNCS[head.name]})")
            args = [self.operand(a, ctx) for a in rest]
            if piped is not None:
                args.append(piped)
            return self.call(head, args)
        if isinstance(head, g.Nil):
            # Go fails `{{nil}}`, `{{with nil}}`, `{{range nil}}` at run time
            raise self.fail(head.pos, "nil is not a command")
        if rest or piped is not None:
            # a method call: `.Format "x"`, `datetime.Format "x"`, `$t.Format "x"`
            fields = getattr(head, "fields", None)
            if not fields:
                raise self.fail(cmd.pos, "can't give arguments to a non-function")
            args = [self.operand(a, ctx) for a in rest]
            if piped is not None:
                args.append(piped)
            target = self._fields_of(head, fields[:-1], ctx)
            name, type_ = self.field(target, fields[-1], head.pos)
            return _Result(f"{name}({', '.join(a.code for a in args)})", type_)
        return self.operand(head, ctx)

    def _fields_of(self, node: g.Operand, fields: list[str], ctx: _Ctx) -> _Result:
        if isinstance(node, g.Field):
            base = _Result(ctx.dot, ctx.dot_type)
        elif isinstance(node, g.Variable):
            base = self.variable(node)
        elif isinstance(node, g.Chain):
            base = self.operand(node.node, ctx)
        else:
            raise self.fail(node.pos, "unexpected operand")
        for name in fields:
            code, type_ = self.field(base, name, node.pos)
            base = _Result(code, type_)
        return base

    def field(self, base: _Result, name: str, pos: g.Pos) -> tuple[str, str]:
        if base.type == "nil":
            # Seen in real confdirs: templates of confd before 0.6, which gave keys as fields
            # (.deis_router_gzip); 0.17 prints <no value> there. Say what works instead.
            raise self.fail(pos, f"field .{name} of confd's nil data (refused: the dot is "
                            "nil outside range/with; confd prints <no value>); to read a key "
                            "write getv \"/key\" (confd before 0.6 gave keys as fields)")
        known = _FIELDS.get(base.type)
        if known is not None:
            if name not in known:
                raise self.fail(pos, f"no field {name} on {base.type}")
            attr, type_ = known[name]
            return f"{base.code}.{attr}", type_
        if name in _DICT_ATTRS or name in _RESERVED:
            return f"{base.code}[{_literal(name)}]", "any"
        return f"{base.code}.{name}", "any"

    def variable(self, node: g.Variable) -> _Result:
        var = self.lookup(node.name, node.pos)
        if var.type == "nil" and not node.fields:
            return _Result("none", "nil")
        return _Result(self.ref(var), var.type)

    def operand(self, node: g.Operand, ctx: _Ctx) -> _Result:
        if isinstance(node, g.Dot):
            return _Result(ctx.dot, ctx.dot_type)
        if isinstance(node, g.Nil):
            return _Result("none", "nil")
        if isinstance(node, g.Bool):
            return _Result("true" if node.value else "false", "bool")
        if isinstance(node, g.Number):
            return _Result(repr(node.value), "int" if isinstance(node.value, int) else "float")
        if isinstance(node, g.String):
            return _Result(_literal(node.value), "str")
        if isinstance(node, g.Variable):
            if node.fields:
                return self._fields_of(node, node.fields, ctx)
            return self.variable(node)
        if isinstance(node, g.Field):
            return self._fields_of(node, node.fields, ctx)
        if isinstance(node, g.Identifier):
            return self.call(node, [])
        if isinstance(node, g.Chain):
            return self._fields_of(node, node.fields, ctx)
        inner = self.pipeline(node, ctx)
        return _Result(f"({inner.code})", inner.type)

    def call(self, ident: g.Identifier, args: list[_Result]) -> _Result:
        name = ident.name
        codes = [a.code for a in args]
        if name in ("and", "or"):
            if not args:
                raise self.fail(ident.pos, f"{name} needs arguments")
            types = {a.type for a in args}
            return _Result("(" + f" {name} ".join(codes) + ")",
                           types.pop() if len(types) == 1 else "any")
        if name == "not":
            if len(args) != 1:
                raise self.fail(ident.pos, "not takes one argument")
            return _Result(f"(not {codes[0]})", "bool")
        if name in ("eq", "ne", "lt", "le", "gt", "ge"):
            if len(args) != 2 and not (name == "eq" and len(args) > 2):
                raise self.fail(ident.pos, f"{name} takes two arguments")
            # Python's operators where both kinds are known to be the same; else Go's rules
            # (mixed kinds are an error there, not false): runtime.go_eq and friends.
            types = {a.type for a in args}
            same = len(types) == 1 and types <= ({"str", "int", "float", "bool"} if name in (
                "eq", "ne") else {"str", "int", "float"})
            if not same:
                return _Result(f"go_{name}({', '.join(codes)})", "bool")
            if name == "eq":
                return _Result("(" + " or ".join(f"{codes[0]} == {c}" for c in codes[1:]) + ")",
                               "bool")
            op = {"ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[name]
            return _Result(f"({codes[0]} {op} {codes[1]})", "bool")
        if name == "len":
            if len(args) != 1:
                raise self.fail(ident.pos, "len takes one argument")
            if args[0].type.startswith("list"):
                return _Result(f"({codes[0]} | length)", "int")
            return _Result(f"go_len({codes[0]})", "int")
        if name == "index":
            if not args:
                raise self.fail(ident.pos, "index needs an argument")
            element = _ELEMENT.get(args[0].type, "any") if len(args) == 2 else "any"
            return _Result(f"go_index({', '.join(codes)})", element)
        if name == "printf":
            if not args:
                raise self.fail(ident.pos, "printf needs a format")
            fmt_node = args[0]
            if fmt_node.type == "str" and fmt_node.code.startswith('"'):
                from ast import literal_eval
                bad = check_format(literal_eval(fmt_node.code))
                if bad:
                    raise self.fail(ident.pos, f"printf verb {bad} (refused: not reproduced "
                                    "faithfully; supported: %v %s %d %q %x %X %o %b %c %t "
                                    "%e %f %g with flags, width and precision)")
        if name == "println":
            raise self.fail(ident.pos, "println inside an expression (refused: its newline "
                            "would be a value; use it as a whole action)")
        if name in _REFUSED_FUNCS:
            raise self.fail(ident.pos, f"{name} (refused: {_REFUSED_FUNCS[name]})")
        if name not in _FUNCS:
            raise self.fail(ident.pos, f"function {name!r} is not a confd function")
        jname, type_ = _FUNCS[name]
        if name in _INT_PARAMS:
            codes = [_integral(a) for a in args]
        if type_ == "same":
            type_ = args[0].type if args else "any"
        return _Result(f"{jname}({', '.join(codes)})", type_)


# confd functions whose parameters are Go ints: Go passes a literal such as `2.0` or `1e3` to
# them as the int it equals (evalInteger takes any NumberNode that IsInt), Python would not.
_INT_PARAMS = frozenset({"add", "sub", "mul", "div", "mod", "seq"})


def _integral(arg: _Result) -> str:
    if arg.type == "float" and re.fullmatch(r"-?[0-9.e+]+", arg.code):
        value = float(arg.code)
        if value.is_integer() and abs(value) < 2**63:
            return str(int(value))
    return arg.code


def to_jinja(parsed: g.ParsedTemplate) -> str:
    """The Jinja2 text for a parsed Go template (raises GoTemplateError on what it refuses)."""
    return Emitter(parsed).emit()


def convert_template(filename: str, source: str) -> str:
    try:
        return to_jinja(g.parse(filename, source))
    except RecursionError:  # parser and emitter recurse per nested action, as Go's do
        raise g.GoTemplateError(filename, 1, 1, "actions or parentheses nested too deeply "
                                "to convert") from None
