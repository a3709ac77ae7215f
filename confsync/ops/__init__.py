"""The ops side of confsync: what observes and operates the pipeline, never what it needs.

`events` (the Observer interface the loop reports to), `metrics` (`watch`'s Prometheus
metrics, /health and /ready), `http` (the server of both daemons' /metrics, /health and
/ready), `sdnotify` (systemd READY/WATCHDOG/STATUS), `supervisor` (the exec-mode child),
`report` (one log event per apply) and `wiring` (building them from settings). The pipeline
(stores, mirror, planner, renderer, sync, reload) imports none of these except the Observer
interface and the report; this package imports nothing heavy at import time, so `once` pays
only for what it uses.
"""
