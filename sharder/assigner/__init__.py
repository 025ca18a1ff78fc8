"""The assigner process: gRPC service, leader election and policy rounds, admin RPCs."""
