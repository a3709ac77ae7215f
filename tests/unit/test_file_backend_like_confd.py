"""The file backend reads a data file as confd's `-backend file` does (measured with confd
0.17: tests/fixtures/confd_diff/yaml.json), so `convert --check --data` compares like with like."""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync.errors import StoreUnavailable
from confsync.stores.file import read_data_file


def test_keys_are_joined_like_go_path_join(tmp_path: Path) -> None:
    # Before: a top-level "/app/port" became //app/port, so no getv found it.
    data = tmp_path / "data.yaml"
    data.write_text('"/app/port": "80"\na/: {b: x}\n')
    assert read_data_file(data) == {"/app/port": b"80", "/a/b": b"x"}


def test_floats_and_nulls_are_written_as_confd_writes_them(tmp_path: Path) -> None:
    # Before: 1.0 was "1.0", 1e20 "1e+20", and a null an empty value instead of no key.
    data = tmp_path / "data.yaml"
    data.write_text("f1: 1.0\nf2: 1e20\nf3: 0.0001\nn1: null\nn2: ~\nn3:\ni: 8080\n")
    assert read_data_file(data) == {"/f1": b"1", "/f2": b"100000000000000000000",
                                   "/f3": b"0.0001", "/i": b"8080"}


def test_plain_scalars_resolve_as_yaml_v2_does(tmp_path: Path) -> None:
    # Before: PyYAML's resolver. `y` stayed "y" (confd: "true"), `08` "08" (confd: "8"),
    # `0o17` "0o17" (15), `1:20` was 80 (confd: "1:20"), a timestamp was re-spelt, a uint64
    # was written (confd leaves the key out) and a number past it kept all its digits (confd
    # reads a float64). Expected texts from confd 0.17 -backend file.
    data = tmp_path / "data.yaml"
    data.write_text("y: y\nN: N\no: 0o17\nd: 08\ns: 1:20\nt: 2001-12-14t21:59:43.10-05:00\n"
                    "u: 18446744073709551615\nb: 18446744073709551616\nm: -9223372036854775809\n"
                    "f: .5_0\nx: 1e400\nq: '08'\n")
    assert read_data_file(data) == {
        "/y": b"true", "/N": b"false", "/o": b"15", "/d": b"8", "/s": b"1:20",
        "/t": b"2001-12-14t21:59:43.10-05:00", "/b": b"18446744073709552000",
        "/m": b"-9223372036854776000", "/f": b"0.5", "/x": b"1e400", "/q": b"08"}


def test_json_numbers_are_plain_scalars_as_confd_reads_them(tmp_path: Path) -> None:
    # confd reads a .json data file with yaml.v2. Before: json.loads made 1e400 "+Inf",
    # Infinity "+Inf", wrote a uint64 (confd drops its key) and kept a long integer's digits.
    data = tmp_path / "data.json"
    data.write_text('{"app": {"a": 1e400, "b": 18446744073709551615, "c": 1.0, "e": '
                    '12345678901234567890123, "i": "08", "n": Infinity, "z": -0.0}}')
    assert read_data_file(data) == {
        "/app/a": b"1e400", "/app/c": b"1", "/app/e": b"12345678901234568000000",
        "/app/i": b"08", "/app/n": b"Infinity", "/app/z": b"-0"}


def test_only_the_first_yaml_document_is_read_as_by_confd(tmp_path: Path) -> None:
    # Before: a second document failed the whole file ("expected a single document").
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  a: 1\n---\napp:\n  b: 2\n")
    assert read_data_file(data) == {"/app/a": b"1"}


@pytest.mark.parametrize(("name", "text"), [("data.yaml", "- a\n- b\n"),
                                            ("data.yaml", "hello\n"),
                                            ("data.json", "[1, 2]")])
def test_a_top_level_that_is_no_mapping_is_refused_as_by_confd(
        tmp_path: Path, name: str, text: str) -> None:
    # confd: "cannot unmarshal !!seq into map[interface {}]interface {}", nothing rendered.
    # Before: keys /0 and /1 (or a key "/"), rendered.
    data = tmp_path / name
    data.write_text(text)
    with pytest.raises(StoreUnavailable, match="not a mapping"):
        read_data_file(data)


def test_an_integer_of_thousands_of_digits_is_text_as_to_confd(tmp_path: Path) -> None:
    # yaml.v2: no int, no uint, a float64 that overflows: the text (measured with confd 0.17).
    # Before: Python's int() refused its 5,000 digits, failing the whole data file.
    data = tmp_path / "data.yaml"
    data.write_text(f"big: {'1' * 5000}\nf300: {'9' * 300}\n")
    values = read_data_file(data)
    assert values["/big"] == b"1" * 5000
    assert values["/f300"] == b"1" + b"0" * 300
