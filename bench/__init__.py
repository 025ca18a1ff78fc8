"""Workloads, the side-by-side router benchmark and the routing-quality simulator."""
