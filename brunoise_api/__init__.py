"""The generated protobuf and gRPC stubs of the brunoise.v1 contracts (proto/brunoise_api/v1), below everything that uses them."""
