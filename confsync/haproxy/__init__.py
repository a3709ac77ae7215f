"""HAProxy support: master CLI reloads that are confirmed, and pool changes via the runtime API.

`config_model` parses the configs we render, `master_cli` and `runtime` talk to the two sockets,
`control` decides between a runtime update and a reload and carries it out.
"""
