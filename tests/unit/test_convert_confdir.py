"""`confsync convert` of resources and confd.toml: fields mapped, the rest reported."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from confsync.convert.confdir import ConvertError, convert_confdir
from confsync.errors import ConfigError
from confsync.resources import load_resources
from confsync.settings import load_settings


def _confd(tmp_path: Path, confd_toml: str, resource: str) -> Path:
    old = tmp_path / "confd"
    (old / "conf.d").mkdir(parents=True)
    (old / "templates").mkdir()
    (old / "templates" / "a.tmpl").write_text('{{ getv "/a" }}\n')
    (old / "confd.toml").write_text(confd_toml)
    (old / "conf.d" / "a.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path}/a.conf"\nkeys = ["/a"]\n{resource}')
    return old


def test_main_config_tls_auth_and_what_has_no_counterpart(tmp_path: Path) -> None:
    old = _confd(tmp_path, '''backend = "etcdv3"
nodes = ["127.0.0.1:2379", "https://10.0.0.2:2379"]
prefix = "/prod"
client_cert = "/etc/confd/client.pem"
client_key = "/etc/confd/client-key.pem"
client_cakeys = "/etc/confd/ca.pem"
username = "confd"
password = "s3cret"
log-level = "warn"
interval = 60
srv_record = "_etcd._tcp.example.com"
''', 'prefix = "/app"\ncheck_cmd = "nginx -t -c {{.src}}"\n'
     'reload_cmd = "systemctl reload nginx && logger reloaded"\nkeep_stage_file = true\n')
    new = tmp_path / "new"
    report = convert_confdir(old, new)
    main = tomllib.loads((new / "confsync.toml").read_text())
    assert main["backend"] == "etcd" and main["prefix"] == "/prod"
    assert main["log_level"] == "warning" and main["confdir"] == str(new)
    assert main["etcd"] == {
        "endpoints": ["http://127.0.0.1:2379", "https://10.0.0.2:2379"],
        "cert": "/etc/confd/client.pem", "key": "/etc/confd/client-key.pem",
        "ca_cert": "/etc/confd/ca.pem", "user": "confd",
        "password_file": str(new / "etcd-password")}
    secret = new / "etcd-password"
    assert secret.read_text() == "s3cret" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "s3cret" not in (new / "confsync.toml").read_text()
    notes = "\n".join(report.notes)
    for expected in ("confd.toml: interval", "confd.toml: srv_record", "template.prefix: dropped",
                     "template.keep_stage_file: no counterpart", "template.reload_cmd: uses shell"):
        assert expected in notes
    resource = tomllib.loads((new / "conf.d" / "a.toml").read_text())["template"]
    assert resource["check_cmd"] == "nginx -t -c {{src}}"
    assert resource["reload_cmd"] == ["sh", "-c", "systemctl reload nginx && logger reloaded"]
    assert "prefix" not in resource
    # what it wrote loads as confsync configuration
    settings = load_settings({"config": str(new / "confsync.toml")})
    loaded = load_resources(settings.confdir, settings.prefix)
    assert loaded.errors == () and loaded.resources[0].prefix == "/prod"


def test_srv_domain_is_kept_and_wins_over_nodes_as_in_confd(tmp_path: Path) -> None:
    """confd's srv_domain was dropped as having no counterpart (confsync has one), leaving the
    nodes, or the default endpoint, where confd had asked DNS."""
    old = _confd(tmp_path, 'backend = "etcdv3"\nnodes = ["127.0.0.1:2379"]\n'
                           'srv_domain = "example.com"\n', "")
    new = tmp_path / "new"
    report = convert_confdir(old, new)
    main = tomllib.loads((new / "confsync.toml").read_text())
    assert main["etcd"] == {"srv_domain": "example.com"}
    notes = "\n".join(report.notes)
    assert "confd.toml: nodes: dropped" in notes and "_etcdv3._tcp" in notes
    assert load_settings({"config": str(new / "confsync.toml")}).etcd.srv_domain == "example.com"


def test_existing_target_is_never_overwritten(tmp_path: Path) -> None:
    old = _confd(tmp_path, 'backend = "etcdv3"\n', "")
    new = tmp_path / "new"
    new.mkdir()
    (new / "keep").write_text("x")
    with pytest.raises(ConvertError, match="not empty"):
        convert_confdir(old, new)
    assert [p.name for p in new.iterdir()] == ["keep"]


def test_other_backends_are_reported(tmp_path: Path) -> None:
    old = _confd(tmp_path, 'backend = "consul"\nnodes = ["127.0.0.1:8500"]\n', "")
    report = convert_confdir(old, tmp_path / "new")
    assert any("backend 'consul' has no counterpart" in n for n in report.notes)


def test_a_password_over_plain_http_nodes_is_flagged(tmp_path: Path) -> None:
    """confd sent it in clear text; confsync refuses (exit 2), so the report says so first."""
    old = _confd(tmp_path, 'backend = "etcdv3"\nnodes = ["10.0.0.1:2379"]\nusername = "u"\n'
                 'password = "p"\n', 'prefix = ""\n')
    report = convert_confdir(old, tmp_path / "new")
    assert any("never sends a password unencrypted" in n for n in report.notes), report.notes
    with pytest.raises(ConfigError, match="needs TLS"):
        load_settings({"config": str(tmp_path / "new" / "confsync.toml")})


@pytest.mark.parametrize("confd_toml,resource,what", [
    ("nodes = [1]\n", "", r"confd\.toml: nodes: expected a list of strings"),
    ('nodes = "127.0.0.1:2379"\n', "", r"confd\.toml: nodes: expected a list of strings"),
    ("a = " + "{b=" * 3000 + "1" + "}" * 3000 + "\n", "", r"confd\.toml: .*nested too deeply"),
    ("", "a = " + "[" * 3000 + "]" * 3000 + "\n", r"a\.toml: .*nested too deeply"),
    ("", "mode = " + "7" * 5000 + "\n", r"a\.toml: not valid TOML"),
])
def test_malformed_confd_files_are_refused_not_a_traceback(tmp_path: Path, confd_toml: str,
                                                           resource: str, what: str) -> None:
    # Found by fuzzing: a TypeError (nodes = [1]) or RecursionError out of `confsync
    # convert`; a string of nodes was taken character by character.
    old = _confd(tmp_path, confd_toml, resource)
    with pytest.raises(ConvertError, match=what):
        convert_confdir(old, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_template_src_leading_out_of_the_confdir_is_never_written_there(
        tmp_path: Path) -> None:
    """confd reads `templates/<src>` wherever `..` leads; the converted copy was written at
    the same place relative to NEW_CONFDIR's templates/, so `../../x` replaced a file beside
    (or above) NEW_CONFDIR. One that stays inside is converted where it leads."""
    old = tmp_path / "a" / "b" / "confd"
    (old / "conf.d").mkdir(parents=True)
    (old / "templates").mkdir()
    (old / "shared").mkdir()
    (old / "conf.d" / "out.toml").write_text(
        '[template]\nsrc = "../../escape.tmpl"\ndest = "/tmp/x"\nkeys = ["/a"]\n')
    (old / "conf.d" / "in.toml").write_text(
        '[template]\nsrc = "../shared/in.tmpl"\ndest = "/tmp/y"\nkeys = ["/a"]\n')
    (old.parent / "escape.tmpl").write_text('{{getv "/a"}}\n')
    (old / "shared" / "in.tmpl").write_text('{{getv "/a"}}\n')
    victim = tmp_path / "out" / "escape.tmpl"  # where ../../ leads from the new templates/
    victim.parent.mkdir()
    victim.write_text("not the converter's\n")
    new = tmp_path / "out" / "new"
    report = convert_confdir(old, new)
    assert victim.read_text() == "not the converter's\n"
    assert any("../../escape.tmpl leads outside the confdir" in note for note in report.notes)
    assert 'getv("/a")' in (new / "shared" / "in.tmpl").read_text()


def test_resources_in_conf_d_subdirectories_are_converted_as_confd_reads_them(
        tmp_path: Path) -> None:
    """confd 0.17 reads every `*toml` file under conf.d at any depth; convert read conf.d/*.toml
    only, so a resource kept in a subdirectory was dropped without a word (and `check` then
    found no resources). It is written flat, where confsync reads it, and said so."""
    old = _confd(tmp_path, "", "")
    (old / "conf.d" / "sub" / "deeper").mkdir(parents=True)
    (old / "conf.d" / "sub" / "b.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path}/b.conf"\nkeys = ["/a"]\n')
    (old / "conf.d" / "sub" / "deeper" / "c.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path}/c.conf"\nkeys = ["/a"]\n')
    (old / "conf.d" / "sub" / "README").write_text("not a resource\n")
    new = tmp_path / "new"
    report = convert_confdir(old, new)
    loaded = load_resources(new)
    assert loaded.errors == ()
    assert sorted(r.name for r in loaded.resources) == ["a", "sub-b", "sub-deeper-c"]
    assert any("conf.d/sub/deeper/c.toml: written as conf.d/sub-deeper-c.toml" in note
               for note in report.notes), report.notes


def test_two_resources_flattened_to_one_name_are_refused(tmp_path: Path) -> None:
    old = _confd(tmp_path, "", "")
    (old / "conf.d" / "x").mkdir()
    for name in ("x/y.toml", "x-y.toml"):
        (old / "conf.d" / name).write_text(
            f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path}/{name[-6]}.conf"\nkeys = ["/a"]\n')
    with pytest.raises(ConvertError, match=r"conf\.d/x/y\.toml and conf\.d/x-y\.toml would "
                                           r"both be written as conf\.d/x-y\.toml"):
        convert_confdir(old, tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("mode,note", [
    ('"644"', "'644' is decimal to confd (it wrote files mode 0204); confsync reads it as "
              "octal 0644"),
    ('"0644"', None), ('"0755"', None), ('"000"', None),
])
def test_a_mode_confd_read_as_decimal_is_noted(tmp_path: Path, mode: str,
                                               note: str | None) -> None:
    """confd parses mode with ParseUint(mode, 0, 32): mode = "644" gave files mode 0204 (seen
    with confd 0.17). confsync reads 0644, as meant, but the file's mode changes on the switch:
    convert said nothing of it."""
    old = _confd(tmp_path, "", f"mode = {mode}\n")
    report = convert_confdir(old, tmp_path / "new")
    notes = [n for n in report.notes if "template.mode" in n]
    assert notes == ([f"a.toml: template.mode: {note}, as you meant: the file's mode changes"]
                     if note else [])


def test_check_renders_a_resource_whose_owner_this_machine_does_not_have(
        tmp_path: Path) -> None:
    """`convert --check` runs on a build machine, which has not the production's users: a
    resource with `owner = "haproxy"` failed to load there ("no such user"), so it could not be
    checked at all. Names are looked up when a file is written, so it renders."""
    import io

    from confsync.convert.check import check_conversion

    old = _confd(tmp_path, "", 'owner = "cs-not-here"\ngroup = "cs-not-here"\n')
    new = tmp_path / "new"
    convert_confdir(old, new)
    data = tmp_path / "data.yaml"
    data.write_text("a: x\n")
    out = io.StringIO()
    assert check_conversion(new, data, None, out) == 0, out.getvalue()
    assert "ok   a: renders" in out.getvalue()


@pytest.mark.parametrize("mode,written,note", [
    # confd 0.17 wrote these files mode 0640, 0640, 0755, 0644 (measured): its
    # os.FileMode(ParseUint(mode, 0, 32)) takes Go's prefixes, and os.Chmod only the
    # permission bits (Go's setuid is another bit). Before: "0o640" and "" were load
    # errors after conversion, and "04755" made a setuid file.
    ('"0o640"', "0640", None), ('"0x1a0"', "0640", None),
    ('"04755"', "0755", "'04755': confd applies only the permission bits (its files were "
                        "mode 0755); written as \"0755\""),
    ('""', None, "empty: confd leaves the mode unset (the file's, else 0644); dropped"),
])
def test_a_mode_is_written_as_the_mode_confd_applied(tmp_path: Path, mode: str,
                                                     written: str | None,
                                                     note: str | None) -> None:
    old = _confd(tmp_path, "", f"mode = {mode}\n")
    report = convert_confdir(old, tmp_path / "new")
    table = tomllib.loads((tmp_path / "new" / "conf.d" / "a.toml").read_text())["template"]
    assert table.get("mode") == written
    assert [n for n in report.notes if "template.mode" in n] == (
        [f"a.toml: template.mode: {note}"] if note else [])
    assert load_resources(tmp_path / "new").errors == ()  # and confsync loads it


def test_confds_unset_ids_and_any_case_of_a_field_convert(tmp_path: Path) -> None:
    """confd's TOML decoder matches names case-insensitively ([Template], Src, Check_Cmd all
    worked) and takes uid/gid -1 as unset. Before: "no [template] table with src", and a
    uid of -1 failed confsync's load."""
    old = tmp_path / "confd"
    (old / "conf.d").mkdir(parents=True)
    (old / "templates").mkdir()
    (old / "templates" / "a.tmpl").write_text("x\n")
    (old / "conf.d" / "a.toml").write_text(
        f'[Template]\nSrc = "a.tmpl"\nDEST = "{tmp_path}/a.conf"\nKeys = ["/a"]\n'
        'uid = -1\ngid = -1\nCheck_Cmd = "test -s {{.src}}"\n')
    report = convert_confdir(old, tmp_path / "new")
    table = tomllib.loads((tmp_path / "new" / "conf.d" / "a.toml").read_text())["template"]
    assert table == {"src": "a.tmpl", "dest": f"{tmp_path}/a.conf", "keys": ["/a"],
                     "check_cmd": "test -s {{src}}"}
    assert "a.toml: template.uid: -1 is unset to confd (its own id); dropped" in report.notes
    (resource,) = load_resources(tmp_path / "new").resources
    assert resource.uid is None and resource.gid is None


def test_two_spellings_of_one_field_are_refused(tmp_path: Path) -> None:
    old = _confd(tmp_path, "", 'Dest = "/elsewhere"\n')
    with pytest.raises(ConvertError, match=r"template\.dest and template\.Dest are one field"):
        convert_confdir(old, tmp_path / "new")


def test_placeholders_confd_left_alone_are_noted(tmp_path: Path) -> None:
    """confd 0.17 fills in only check_cmd's {{.src}}: its check_cmd's {{.dest}} ran as
    `<no value>` and reload_cmd went to sh as written (`touch {{.dest}}.reloaded` made a file
    named so in confd's directory, measured). confsync fills both in: said, not silent."""
    old = _confd(tmp_path, "", 'check_cmd = "cmp {{.src}} {{.dest}}"\n'
                               'reload_cmd = "touch {{.dest}}.reloaded"\n')
    report = convert_confdir(old, tmp_path / "new")
    assert [n for n in report.notes if "fill" in n] == [
        "a.toml: template.check_cmd: {{.dest}}: confd 0.17 does not fill this in check_cmd "
        "(it ran <no value>); confsync does: review",
        "a.toml: template.reload_cmd: {{.dest}}: confd 0.17 does not fill this in reload_cmd "
        "(it ran the text as written, to sh); confsync does: review"]


def test_a_crlf_template_keeps_its_crlf_and_check_compares_bytes(tmp_path: Path) -> None:
    """confd writes a CRLF template's CRs (measured: `a\\r\\n{{getv}}\\r\\n` gave
    `a\\r\\nx\\r\\n`). convert read templates with read_text, whose newline translation dropped
    every CR, and `--check --expect` read confd's file the same way, so the two agreed on the
    wrong bytes: no difference was shown."""
    import io

    from confsync.convert.check import check_conversion

    old = _confd(tmp_path, "", "")
    (old / "templates" / "a.tmpl").write_bytes(b'a\r\n{{ getv "/a" }}\r\n')
    new = tmp_path / "new"
    convert_confdir(old, new)
    data = tmp_path / "data.yaml"
    data.write_text("a: x\n")
    expect = tmp_path / "expect"
    expect.mkdir()
    (expect / "a.conf").write_bytes(b"a\r\nx\r\n")
    out = io.StringIO()
    assert check_conversion(new, data, expect, out) == 0, out.getvalue()
    (expect / "a.conf").write_bytes(b"a\nx\n")
    assert check_conversion(new, data, expect, io.StringIO()) == 1


@pytest.mark.parametrize("command", [
    "LC_ALL=C nginx -t -c {{src}}", "! grep -q bad {{src}}", "exit 0", ": nothing to check",
    "export X=1", "nginx -t -c {{src}} # the staged file", "true\nfalse"])
def test_a_command_only_a_shell_runs_keeps_its_shell(tmp_path: Path, command: str) -> None:
    """confd runs every command with `sh -c`. These have no `|&;<>$...` but still need sh: an
    assignment, `!`, a builtin, a comment, a second line. Before: split and run without a
    shell, they failed ("cannot run `LC_ALL=C`: not found in PATH", `test: extra argument
    '#'`) where confd passed, and `true\\nfalse` passed (shlex took the line break for a
    space) where confd failed (measured against confd 0.17)."""
    old = _confd(tmp_path, "", f"check_cmd = {json.dumps(command)}\n")
    report = convert_confdir(old, tmp_path / "new")
    table = tomllib.loads((tmp_path / "new" / "conf.d" / "a.toml").read_text())["template"]
    assert table["check_cmd"] == ["sh", "-c", command]
    assert any("template.check_cmd" in n and "review it" in n for n in report.notes)


def test_a_plain_command_is_still_run_without_a_shell(tmp_path: Path) -> None:
    # an `=` past the first word, a `#` inside one: no shell needed, none used
    old = _confd(tmp_path, "", 'check_cmd = "env X=1 nginx -t -c {{.src}} -g \'a#b\'"\n')
    convert_confdir(old, tmp_path / "new")
    table = tomllib.loads((tmp_path / "new" / "conf.d" / "a.toml").read_text())["template"]
    assert table["check_cmd"] == "env X=1 nginx -t -c {{src}} -g 'a#b'"
