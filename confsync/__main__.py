from confsync.cli import entry

entry()
