"""toml_cache: the same bytes give what tomllib gives, from the cache once kept."""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path

import pytest

from confsync import toml_cache
from confsync.tomlvalues import parse_toml

DOCUMENTS = [
    b"",
    b'[template]\nsrc = "a.tmpl"\ndest = "/etc/a.conf"\nkeys = ["/a", "/b"]\nmode = "0644"\n',
    b'confdir = "/etc/confsync"\nrender_memo = true\n[etcd]\nendpoints = ["http://h:2379"]\n'
    b'timeout = "5s"\n',
    b"i = 12345678901234567890123\nf = -0.0\nn = nan\ninf = -inf\nb = false\nhex = 0xff\n",
    b'[[servers]]\nname = "\xc3\xa9t\xc3\xa9 \\u0000 \\t"\nports = [1, 2]\n[[servers]]\n'
    b"name = '''multi\nline'''\n[deep.er.table]\nx = {y = [{z = 1}]}\n",
]


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"confsync-toml-{os.geteuid()}"


@pytest.mark.parametrize("raw", DOCUMENTS)
def test_kept_and_loaded_as_tomllib_parses(raw: bytes, private_tmp: Path) -> None:
    expected = tomllib.loads(raw.decode())
    assert toml_cache.load(raw) is None
    first = parse_toml(raw)
    assert repr(first) == repr(expected)  # (repr: nan, -0.0 and key order compared too)
    assert repr(toml_cache.load(raw)) == repr(expected)
    assert repr(parse_toml(raw)) == repr(expected)
    assert parse_toml(raw) is not parse_toml(raw)  # each caller its own
    assert len([p for p in private_tmp.iterdir() if p.name.startswith("toml-")]) == 1


def test_dates_and_times_are_not_kept(private_tmp: Path) -> None:
    raw = b"when = 1979-05-27T07:32:00Z\nday = 1979-05-27\n"
    assert parse_toml(raw) == tomllib.loads(raw.decode())
    assert toml_cache.load(raw) is None


def test_a_bad_entry_is_a_parse(private_tmp: Path) -> None:
    raw = DOCUMENTS[1]
    parse_toml(raw)
    (entry,) = private_tmp.glob("toml-*")
    entry.write_bytes(b"\x00garbage")
    assert toml_cache.load(raw) is None
    assert parse_toml(raw) == tomllib.loads(raw.decode())
    assert toml_cache.load(raw) == tomllib.loads(raw.decode())  # kept again


def test_errors_stay_tomllibs(private_tmp: Path) -> None:
    with pytest.raises(ValueError, match="Expected '=' after a key"):
        parse_toml(b"[template]\nsrc\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_toml(b"a = '\xff'\n")
    assert not list(private_tmp.glob("toml-*"))


def test_no_private_directory_no_cache(tmp_path: Path, private_tmp: Path) -> None:
    private_tmp.mkdir(mode=0o777)
    private_tmp.chmod(0o777)  # others may write: not ours to trust
    raw = DOCUMENTS[1]
    assert parse_toml(raw) == tomllib.loads(raw.decode())
    assert toml_cache.load(raw) is None
    assert not list(private_tmp.iterdir())
