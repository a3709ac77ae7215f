"""Which commands run once and which run for months: read by start.py before anything else is
imported (a module of its own, importing nothing), and by the CLI."""

# A fixed amount of work, then exit: no collector, no interpreter teardown.
ONE_SHOT_COMMANDS = ("once", "check")
# Run for months: they import up front what they could need later (preload.py), and start.py
# holds their signals before the CLI is imported.
LONG_RUNNING_COMMANDS = ("watch", "register")
