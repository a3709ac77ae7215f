"""Realistic confd templates (nginx, HAProxy, JSON and INI configs, map/split-heavy ones), written
in confd's Go syntax: converted to Jinja and rendered by confsync, byte-identical to the golden
output Go's text/template produced (tests/support/gotmpl). When `go` is installed the goldens
are re-derived from Go too, so they cannot drift from Go's behaviour."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gorender import build_gotmpl, convert_and_render, go_available, render_go

FIXTURES = Path(__file__).parents[1] / "fixtures" / "confd_templates"
TEMPLATES = sorted(p.name for p in FIXTURES.glob("*.tmpl"))
DATA: dict[str, str] = json.loads((FIXTURES / "data.json").read_text())
ENV = {"CONFD_TEST_NODE": "edge7"}


def test_there_are_at_least_twenty() -> None:
    assert len(TEMPLATES) >= 20


@pytest.mark.parametrize("name", TEMPLATES)
def test_converted_template_renders_byte_identical(name: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    expected = (FIXTURES / name).with_suffix(".expected").read_text()
    assert convert_and_render((FIXTURES / name).read_text(), DATA, name) == expected


@pytest.fixture(scope="module")
def gotmpl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not go_available():
        pytest.skip("go is not installed: goldens are checked against confsync only")
    yield build_gotmpl(tmp_path_factory.mktemp("gotmpl"))


@pytest.mark.parametrize("name", TEMPLATES)
def test_golden_is_what_go_renders(name: str, gotmpl: Path) -> None:
    expected = (FIXTURES / name).with_suffix(".expected").read_text()
    assert render_go(gotmpl, (FIXTURES / name).read_text(), DATA, ENV) == expected
