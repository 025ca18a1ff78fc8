"""brunoise: the admin CLI (brunoise.cli) and what it launches with; the generated contracts are brunoise_api.v1."""
