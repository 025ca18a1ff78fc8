"""Engine adapters behind one interface: the real vLLM server and the simulated engine."""
