"""The file backend reads a data file as confd's `-backend file` does (measured with confd
0.17: tests/fixtures/confd_diff/yaml.json), so `convert --check --data` compares like with like."""

from __future__ import annotations

from pathlib import Path

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
