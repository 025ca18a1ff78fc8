"""Authentication and TLS for the assigner: bearer tokens by role, one server interceptor, certificates."""
