from confsync.start import entry

entry()
