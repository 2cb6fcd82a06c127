"""camserve.v1: the gRPC API (camserve.proto) and its generated stubs (scripts/gen_protos.py)."""
