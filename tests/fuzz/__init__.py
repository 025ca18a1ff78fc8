"""Fuzz tests (hypothesis) of the router's HTTP and gRPC surfaces against a real cluster."""
