"""Generated protobuf and gRPC stubs for brunoise.v1 (do not edit)."""
