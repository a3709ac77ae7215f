"""`{% memo kv %}...{% endmemo %}`: a template block whose output is reused while its inputs
are the same.

A watch re-renders the whole file for a one-key change, and a 5,000-server pool was 5,000 times
the same per-server work (a JSON document, four validators, six lookups, four checked outputs:
~3 us each, most of a render). A block marked `memo` names the variables its output depends
on; its output is kept, keyed by the block and those variables' exact values, and stands in
for the block whenever they come again. So a server whose key and value did not change costs a
dict lookup, and one that did is rendered, validated and checked as before. Reuse is exact,
never a guess, because the compiler proves the output is a function of the keys:
- the body may read no variable but its keys (not a loop's `loop`, not a function such as
  `getv`, whose answer depends on more than its arguments), no impure filter
  (render_purity.py), and includes, imports and blocks are refused (they read the context);
- a key must be text or an item of `gets`/`get` (exact types: `1`, `1.0` and `True` are equal
  in Python but print differently); any other value renders the block, uncached;
- only a body that rendered kept its output, which passed every check of the body (filters,
  `finalize`) on the way; it is handed out as already checked text, so it may hold the body's
  own line breaks;
- the outputs belong to one Renderer (its compiled templates, its filters), which the
  renderer switches off for the attribution render (its values are tagged with their keys).
Outputs are kept in two generations: the current one is set aside once it holds as many
outputs as the renderer allows (about twice the keys in the mirror), and what a render still
uses is taken back from it, so an output no render uses goes at the second turn.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.parser import Parser

from confsync.render_purity import is_impure

# Filter names no template can write (a name with a colon): what the compiled block calls.
LOOKUP = "memo:lookup"
KEEP = "memo:keep"
# Statements whose output depends on more than the variables the body reads.
_REFUSED = {nodes.Include: "an include", nodes.Import: "an import",
            nodes.FromImport: "an import", nodes.Block: "a block", nodes.Extends: "an extends",
            nodes.ContextReference: "the context", nodes.DerivedContextReference: "the context"}


class BlockOutputs:
    """The kept outputs of one Renderer's memo blocks, switched on for one render at a time
    (renders run one at a time, on one thread). A key is the block's id and its variables'
    values, in a tuple."""

    def __init__(self, key_types: Collection[type], mark: Callable[[str], str]) -> None:
        self._key_types = frozenset(key_types)
        self._mark = mark  # what tells `finalize` that this text was checked already
        self._on = False
        self._kept: dict[tuple[Any, ...], str] = {}
        self._older: dict[tuple[Any, ...], str] = {}
        self._limit = 0

    def __len__(self) -> int:
        return len(self._kept) + len(self._older)

    def begin(self, limit: int) -> None:
        """Switch reuse on for one render; each generation holds at most `limit` outputs."""
        self._limit = limit
        self._on = True

    def end(self) -> None:
        """Switch reuse off (between renders, and for an attribution render)."""
        self._on = False

    def _exact(self, key: tuple[Any, ...]) -> bool:
        if len(key) == 2:  # (one variable: the common case, without the generator)
            return type(key[1]) in self._key_types
        return self._key_types.issuperset(map(type, key))

    def _put(self, key: tuple[Any, ...], output: str) -> None:
        if len(self._kept) >= self._limit:  # full: set aside, and the older one dropped
            self._older, self._kept = self._kept, {}
        self._kept[key] = output

    def lookup(self, key: tuple[Any, ...]) -> str | None:
        """The output kept for `key`, or None."""
        if not self._on or not self._exact(key):
            return None
        output = self._kept.get(key)
        if output is None:
            output = self._older.get(key)
            if output is not None:
                self._put(key, output)
        return output

    def keep(self, key: tuple[Any, ...], text: str) -> str:
        """The output the block rendered for `key`, kept when reuse is on and the key exact."""
        output = self._mark(text)
        if self._on and self._exact(key):
            self._put(key, output)
        return output


class _FreeNames(CodeGenerator):
    """The names a body reads from outside it (the compiler's own scoping, as
    `jinja2.meta.find_undeclared_variables`, but globals included and nothing folded)."""

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment, "<memo>", "<memo>", optimized=False)
        self.free: set[str] = set()

    def write(self, x: str) -> None:
        """Nothing is written: only the frames are looked at."""

    def enter_frame(self, frame: Frame) -> None:
        super().enter_frame(frame)
        self.free.update(param for action, param in frame.symbols.loads.values()
                         if action == "resolve")


class MemoExtension:
    """The `memo` tag. `install` wires it to a `BlockOutputs`.

    What Jinja asks of an extension (`jinja2.ext.Extension`'s interface), without subclassing
    it: importing `jinja2.ext` imports `pprint`, and with it `dataclasses`, which a one-shot
    run does not import otherwise (tests/unit/test_lazy_imports.py)."""

    identifier = f"{__name__}.MemoExtension"
    tags = {"memo"}  # noqa: RUF012  (Jinja's own attribute, a set)
    priority = 100

    def __init__(self, environment: jinja2.Environment) -> None:
        self.environment = environment

    def bind(self, environment: jinja2.Environment) -> MemoExtension:
        return type(self)(environment)

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return source

    def filter_stream(self, stream: Any) -> Any:
        return stream

    def parse(self, parser: Parser) -> list[nodes.Node]:
        lineno = next(parser.stream).lineno
        names = [parser.stream.expect("name").value]
        while parser.stream.skip_if("comma"):
            names.append(parser.stream.expect("name").value)
        body = parser.parse_statements(("name:endmemo",), drop_needle=True)
        self._refuse_outside_reads(body, names, lineno, parser)
        block = os.urandom(12).hex()  # this block of this compiled template, and no other

        key, output, text = (parser.free_identifier(lineno) for _ in range(3))
        return [
            nodes.Assign(key, nodes.Tuple([nodes.Const(block),
                                           *(nodes.Name(n, "load") for n in names)], "load"),
                         lineno=lineno),
            nodes.Assign(output, nodes.Filter(key, LOOKUP, [], [], None, None), lineno=lineno),
            nodes.If(nodes.Not(output), [
                nodes.AssignBlock(text, None, body, lineno=lineno),
                nodes.Assign(output, nodes.Filter(key, KEEP, [text], [], None, None),
                             lineno=lineno),
            ], [], [], lineno=lineno),
            nodes.Output([output], lineno=lineno),
        ]

    def _refuse_outside_reads(self, body: list[nodes.Node], names: list[str], lineno: int,
                              parser: Parser) -> None:
        for node in body:
            for kind, what in _REFUSED.items():
                found = node if isinstance(node, kind) else node.find(kind)
                if found is not None:
                    parser.fail(f"a memo block may not hold {what}: its output would depend "
                                f"on more than its keys", found.lineno or lineno)
            for used in node.find_all(nodes.Filter):
                if is_impure(self.environment.filters.get(used.name)):
                    parser.fail(f"a memo block may not use {used.name!r}: its answer is not "
                                f"a function of its arguments", used.lineno or lineno)
        template = nodes.Template(body, lineno=lineno)
        template.set_environment(self.environment)
        reader = _FreeNames(self.environment)
        reader.visit(template)
        outside = sorted(reader.free - set(names))
        if outside:
            parser.fail(f"a memo block may read only its keys ({', '.join(names)}); this one "
                        f"reads {', '.join(outside)}: name it as a key (text or a gets item), "
                        f"or set it inside the block", lineno)


def install(environment: jinja2.Environment, outputs: BlockOutputs) -> None:
    """Give `environment` the `memo` tag, its outputs kept in `outputs`."""
    extension = MemoExtension(environment)
    environment.extensions[extension.identifier] = extension  # type: ignore[assignment]
    environment.filters[LOOKUP] = outputs.lookup
    environment.filters[KEEP] = outputs.keep
