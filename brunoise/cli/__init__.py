"""The `brunoise` command line: admin commands against the assigner and `brunoise cluster up`."""
