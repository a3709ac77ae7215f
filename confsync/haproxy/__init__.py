"""HAProxy support, as a reload plugin: confirmed master CLI reloads and pool changes through
the runtime API.

`plugin` is what confsync/targets.py loads for a resource's `[haproxy]` table (`settings`
parses it); `control` is the reload target that decides between a runtime update and a reload
and carries it out; `config_model` parses the configs we render, `master_cli` and `runtime` talk
to the two sockets. Nothing outside this package imports it.
"""
