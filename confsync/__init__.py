"""confsync: keep local configuration files in step with etcd."""

__version__ = "0.1.0"
