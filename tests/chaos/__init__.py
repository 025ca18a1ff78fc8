"""Fault-injection suite: real processes, real etcd, a steady client load, and the figures each scenario records."""
