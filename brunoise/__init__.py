"""brunoise: generated contracts (brunoise.v1) and the admin CLI (brunoise.cli)."""
