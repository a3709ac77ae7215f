"""`confsync register`: the producing half of dynamic pools.

Each instance node runs one registrar: it health-checks the local service and keeps its
registration (`/services/<service>/instances/<id>`, the shipped HAProxy template's schema) alive
on one etcd lease, so a dead node disappears by itself after the lease's TTL.

    config.py     register.d/*.toml -> Registration (validated with the template's schema)
    checks.py     http / tcp / exec probes and rise/fall hysteresis
    state.py      what each registration should publish now (health, maintenance, drain)
    maintenance.py  the maintenance file's lookup, off the loop (a hung mount holds it alone)
    address.py    the address published when a file names none, followed as the host's changes
    registrar.py  the etcd side: one lease, keepalive, ownership-checked puts and deletes
    run.py        the command: loop, signals, exec child, metrics, sd_notify
"""
