"""camserve.inference: the Open Inference Protocol (KServe v2) gRPC API, proto package ``inference``
(grpc_service.proto), and its generated stubs (scripts/gen_protos.py).

Not imported by ``camserve`` or ``camserve.service.server`` at import time: tritonclient registers
the same proto package in protobuf's default descriptor pool, and the two cannot live in one process.
The server imports these stubs when it starts; clients use tritonclient (or their own stubs).
"""
