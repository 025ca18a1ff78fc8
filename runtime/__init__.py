"""runtime: one pod; engine adapters (vLLM, simulated), its serving surfaces and its load and cache reports."""
