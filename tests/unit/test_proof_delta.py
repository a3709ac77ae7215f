"""The check-skip proof from what changed (`proof_delta`) answers as the full proof does.

Random edits to the shipped template's output of a few hundred servers (instances added,
removed, changed, moved between services, services' settings, several at once) and to its
text (hostile server lines, names referenced elsewhere, line breaks other than `\\n`, new
sections, `default-server` lines), proven one after the other the way the syncer does: the
controller's decision, the model the reload step reads and the runtime changes computed from
it must be the full proof's and `parse`'s, with the servers in the file's order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from confsync.haproxy import proof_delta
from confsync.haproxy.config_model import HAProxyConfig, mentions, parse, runtime_changes
from confsync.haproxy.control import HAProxyController, server_only_change
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.mirror import Mirror
from confsync.plugins import PluginConfig
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch, Snapshot

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates/haproxy/templates/haproxy.cfg.tmpl"
SERVICES = ("api", "web", "static")
_NAMED = ("i0003", "i0007", "i0011", "i0012", "i0013")  # instances named in the `extra` lines


def _instance(rng: random.Random) -> bytes:
    return json.dumps({"address": f"10.{rng.randrange(4)}.{rng.randrange(256)}."
                                  f"{rng.randrange(1, 255)}",
                       "port": rng.choice((80, 8080, 9000)), "weight": rng.randrange(0, 257),
                       "state": rng.choice(("ready", "ready", "ready", "drain", "maint"))}
                      ).encode()


def _controller(tmp_path: Path) -> HAProxyController:
    settings = HAProxySettings(strategy=Strategy.RUNTIME, runtime_socket=tmp_path / "no.sock",
                               check_server_changes=False)
    res = Resource(name="h", source=tmp_path / "h.toml", src=TEMPLATE, dest=tmp_path / "h.cfg",
                   keys=("/services", "/haproxy"), prefix="",
                   plugin=PluginConfig("haproxy", settings), reload_cmd=("true",),
                   check_cmd=("true",))
    return HAProxyController(res, settings)


def _shape(model: HAProxyConfig) -> object:
    """Everything of a model, the servers' order too (dataclass equality ignores it)."""
    return (model.skeleton, model.binds, model.stats_socket, model.state_file,
            model.hard_stop_after, model.opaque,
            [(b.name, b.balance, b.default_server, list(b.servers.items()), b.server_defaults,
              b.templates) for b in model.backends.values()])


def _holds(proven: proof_delta.Proven, checked: bytes) -> None:
    """What the next proof from `proven` takes for true of it."""
    assert proven.checked == checked
    model = parse(proven.content.decode("utf-8", "replace"))
    assert _shape(proven.model) == _shape(model)
    assert proven.headers == proof_delta._headers(proven.content)
    assert proof_delta.plain(proven.content)
    base = parse(checked.decode("utf-8", "replace"))
    gone: dict[str, set[str]] = {}
    for name, backend in base.backends.items():
        for server in backend.servers:
            if server not in model.backends[name].servers:
                gone.setdefault(server, set()).add(name)
    assert proven.gone == gone


def test_a_name_is_mentioned_in_the_bytes_where_it_is_in_the_text() -> None:
    """`proof_delta._mentioned` (bytes.find) answers as `config_model.mentions` (a regex)."""
    rng = random.Random(7)
    pieces = ["ab", "a", "b.c", "a-b", " ", "\n", "/", "(", "é", "\ufffd", ":", "x1", "_"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        name = rng.choice(["ab", "a", "b.c", "a-b", "x1"])
        assert proof_delta._mentioned(text.encode(), name) == mentions(text, name), (text, name)


class _Source:
    """The shipped template rendered from a mirror that random changes are applied to."""

    def __init__(self, rng: random.Random, servers: int) -> None:
        self.rng = rng
        self.revision = 1
        data = {"/haproxy/frontends/main": json.dumps(
            {"bind": ["127.0.0.1:18080"], "default_service": "web"}).encode()}
        for i in range(servers):
            data[f"/services/{rng.choice(SERVICES)}/instances/i{i:04d}"] = _instance(rng)
        self.mirror = Mirror()
        self.mirror.load(Snapshot(1, data))
        self.renderer = Renderer(TEMPLATE.parent)
        self.resource = Resource(name="h", source=Path("h.toml"), src=TEMPLATE,
                                 dest=Path("/nonexistent/h.cfg"),
                                 keys=("/services", "/haproxy"), prefix="")
        self.next_id = servers
        self.removed: list[str] = []  # instance ids removed, which may come back
        # Lines every render gets (before the first line equal to the anchor): what the
        # template does not write but a checked file may hold (each 50 %).
        self.extra = [(anchor, line) for anchor, line in (
            ("backend be_static", "    default-server inter 9s"),  # (below be_api's servers)
            ("    http-check expect status 200-399", "    use-server i0003 if TRUE"),
            ("    http-check expect status 200-399", "    http-request set-var(txn.s) str(i0007)"),
            ("global", "# i0011 i0012 i0013"),
            ("backend be_web", "backend be_api"),  # (a backend name twice)
            ("backend be_static", "    server-template slot 1-3 10.9.9.9:80 check"),
        ) if rng.random() < 0.5]

    def render(self) -> bytes:
        lines = self.renderer.render(self.resource, self.mirror).split("\n")
        for anchor, line in self.extra:
            if anchor in lines:
                lines.insert(lines.index(anchor), line)
        return "\n".join(lines).encode()

    def change(self) -> None:
        rng = self.rng
        keys = [k for k in self.mirror.keys_with_prefix("/services/") if "/instances/" in k]
        changes = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            what = rng.random()
            if what < 0.15 and self.removed:  # back, in any service
                changes.append(Change(f"/services/{rng.choice(SERVICES)}/instances/"
                                      f"{self.removed.pop(rng.randrange(len(self.removed)))}",
                                      _instance(rng)))
            elif what < 0.3 or not keys:
                self.next_id += 1
                changes.append(Change(f"/services/{rng.choice(SERVICES)}/instances/"
                                      f"i{self.next_id:04d}", _instance(rng)))
            elif what < 0.5:
                named = [k for k in keys if k.rsplit("/", 1)[1] in _NAMED]
                key = rng.choice(named if named and rng.random() < 0.3 else keys)
                self.removed.append(key.rsplit("/", 1)[1])
                changes.append(Change(key, None))
            elif what < 0.8:
                changes.append(Change(rng.choice(keys), _instance(rng)))
            elif what < 0.9:  # the same instance in another service
                key = rng.choice(keys)
                changes.append(Change(key, None))
                other = rng.choice([s for s in SERVICES if f"/{s}/" not in key])
                changes.append(Change(f"/services/{other}/instances/{key.rsplit('/', 1)[1]}",
                                      _instance(rng)))
            else:  # a service's settings: lines other than servers
                changes.append(Change(f"/services/{rng.choice(SERVICES)}/config", json.dumps(
                    {"balance": rng.choice(("roundrobin", "static-rr", "leastconn")),
                     "check_path": rng.choice(("/", "/healthz"))}).encode()))
        self.revision += 1
        self.mirror.apply(ChangeBatch(self.revision, tuple(changes)))


_HOSTILE: tuple[str | bytes, ...] = (
    "    server x;help 10.0.0.9:80 weight 1 check",
    "    server h1 10.0.0.9:8\u0660 weight 1 check",
    "    server h2 10.0.0.9:80 weight 300 check",
    "    server h3 fe80::1%eth0:80 weight 1 check",
    "    server h4 backend.example:80 weight 1 check",
    "    server h5 10.0.0.9:80 weight 1 check track be_web/i0001",
    "    server h6 10.0.0.9:80 weight 1 check inter 1s",
    "    server h7 [2001:db8::7]:80 weight 5 check",
    "    server h8\u200910.0.0.8:80 weight 5 check",
    "    server h9 10.0.0.9:80 weight 5 check\r",
    "    server h10 10.0.0.9:80 weight 5 check\u2028",
    "    server h11 10.0.0.9:80 weight 5 check disabled",
    "server h12 10.0.0.9:80 weight 5 check",
    "    default-server inter 5s",
    "    use-server {name} if TRUE",
    "    # was {name}",
    "    http-request set-header X-S {name}",
    "backend be_extra",
    "backend be_web",
    "listen li",
    "",
    "    ",
    "    server {name} 10.0.0.9:80 weight 5 check",
    "    server {name} 10.0.0.10:81 weight 7 check",
    b"    server h13\xff\xfe 10.0.0.9:80 weight 5 check",
    b"    server h14 10.0.0.9:80 weight 5 check # \xe2\x80",
)


def _text_edit(rng: random.Random, content: bytes) -> bytes:
    """A random line edit: a hostile or structural line inserted, or a line replaced or
    deleted (`{name}`: a name of the file's servers)."""
    lines = content.split(b"\n")
    names = [line.split()[1] for line in lines if line.strip().startswith(b"server ")
             and len(line.split()) > 1] or [b"none"]
    at = rng.randrange(len(lines))
    what = rng.random()
    servers = [i for i, line in enumerate(lines) if line.startswith(b"    server ")]
    if what < 0.1 and servers:  # a server's options
        at = rng.choice(servers)
        lines[at] = lines[at].replace(b" check", rng.choice((b" check inter 1s", b" no-check",
                                                             b" check", b"")))
    elif what < 0.2:
        del lines[at]
    else:
        line = rng.choice(_HOSTILE)
        line = line.encode() if isinstance(line, str) else line
        line = line.replace(b"{name}", rng.choice(names))
        if what < 0.5:
            lines[at] = line
        else:
            lines.insert(at, line)
    edited = b"\n".join(lines)
    return edited.rstrip(b"\n") if rng.random() < 0.05 else edited  # (no `\n` at the end)


@pytest.mark.parametrize("seed", range(10))
def test_the_proof_from_what_changed_answers_as_the_full_proof(tmp_path: Path,
                                                               seed: int) -> None:
    rng = random.Random(seed)
    source = _Source(rng, 300)
    controller = _controller(tmp_path)
    delta_answers = 0
    real_prove = proof_delta.prove

    def counted(*args: object, **kwargs: object) -> proof_delta.Proven | None:
        nonlocal delta_answers
        found = real_prove(*args, **kwargs)  # type: ignore[arg-type]
        delta_answers += found is not None
        return found

    proof_delta.prove = counted  # type: ignore[assignment]
    try:
        checked = previous = source.render()
        proven = 0
        for _ in range(150):
            if rng.random() < 0.75:
                source.change()
                content = source.render()
            else:
                content = _text_edit(rng, previous)
            fast = controller.may_skip_check(previous, content, checked)
            assert fast == server_only_change(checked, content), content
            proven += fast
            if fast:
                kept = [p for p in controller._proven if p.content == content]
                if kept:  # (none when the file is no start of proofs: `_readable`)
                    _holds(kept[-1], checked)
                # What the reload step reads: the same model, the same runtime changes.
                new, old = controller._parsed(content), controller._parsed(previous)
                full_new = parse(content.decode("utf-8", "replace"))
                full_old = parse(previous.decode("utf-8", "replace"))
                assert _shape(new) == _shape(full_new)
                assert _shape(old) == _shape(full_old)
                assert runtime_changes(old, new) == runtime_changes(full_old, full_new)
                if rng.random() < 0.9:  # (else its install failed: the file stays)
                    previous = content
            elif rng.random() < (0.6 if not parse(content.decode("utf-8", "replace")).opaque
                                 else 0.1):  # checked (and passed): the next proofs' base
                checked = previous = content
    finally:
        proof_delta.prove = real_prove  # type: ignore[assignment]
    # Both answers came up, and many proven changes were proven from what changed (none
    # where a backend's name is twice: proofs from such a file are the full proof's).
    assert 20 < proven < 150
    if ("backend be_web", "backend be_api") in source.extra:
        assert delta_answers == 0
    else:
        assert delta_answers > proven * 0.3
