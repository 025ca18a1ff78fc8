"""Product tests: the `brunoise` CLI, `brunoise cluster up` and the compose file."""
