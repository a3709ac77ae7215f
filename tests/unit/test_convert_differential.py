"""Differential check of the converter's whitespace handling: random whitespace-heavy templates
(trim markers, indented and nested range/if/else, comments, braces in text) rendered by Go's
text/template and by confsync from the converted Jinja must be byte-identical. Needs `go`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gorender import build_gotmpl, convert_and_render, go_available, render_go

DATA = {"/a": "x", "/l/1": "one", "/l/2": "two"}
TEXT = ["", " ", "  ", "\t", "\n", "\n\n", "  \n", "\n  ", "a", "b c", "{", "}", "%", "#",
        " x\n  "]
CONDITIONS = ["true", "false", 'exists "/a"', 'exists "/none"']
VALUES = ['getv "/a"', ".", "1", "true", 'print "p"', '$v', 'printf "%3s" "q"']


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def left(self) -> str:
        return self.rng.choice(["{{", "{{- "])

    def right(self) -> str:
        return self.rng.choice(["}}", " -}}"])

    def end(self) -> str:
        return f"{self.left()}end{self.right()}"

    def action(self, depth: int) -> str:
        r = self.rng.random()
        if depth < 3 and r < 0.2:
            return f'{self.left()}range getvs "/l/*"{self.right()}{self.body(depth + 1)}{self.end()}'
        if depth < 3 and r < 0.4:
            orelse = ""
            if self.rng.random() < 0.5:
                orelse = f"{self.left()}else{self.right()}{self.body(depth + 1)}"
            return (f"{self.left()}if {self.rng.choice(CONDITIONS)}{self.right()}"
                    f"{self.body(depth + 1)}{orelse}{self.end()}")
        if r < 0.5:
            return self.rng.choice(["{{/* c */}}", "{{- /* c */ -}}", "{{- /* c */}}"])
        return f"{self.left()}{self.rng.choice(VALUES)}{self.right()}"

    def body(self, depth: int) -> str:
        out = []
        for _ in range(self.rng.randint(0, 4)):
            out.append(self.rng.choice(TEXT))
            if self.rng.random() < 0.6:
                out.append(self.action(depth))
        return "".join(out)

    def template(self) -> str:
        return '{{ $v := "var" }}' + self.body(0) + self.rng.choice(["", "\n"])


@pytest.fixture(scope="module")
def gotmpl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not go_available():
        pytest.skip("go is not installed: the differential check needs Go's text/template")
    yield build_gotmpl(tmp_path_factory.mktemp("gotmpl"))


@pytest.mark.parametrize("seed", range(4))
def test_random_whitespace_templates_match_go(seed: int, gotmpl: Path) -> None:
    generator = _Generator(seed)
    compared = 0
    for _ in range(60):
        template = generator.template()
        try:
            expected = render_go(gotmpl, template, DATA)
        except RuntimeError:
            continue  # Go refused it too (e.g. a trim marker glued to a value)
        assert convert_and_render(template, DATA) == expected, repr(template)
        compared += 1
    assert compared >= 30
