"""Front ends of the router: OpenAI-compatible HTTP and gRPC, thin shells around ``Router``."""
