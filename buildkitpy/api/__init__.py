"""Generated protobuf and gRPC modules (see hack/genproto.py)."""
