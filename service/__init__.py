"""camserve.service: the gRPC explanation service (``camserve serve``).

server.py      the grpc.aio server: ExplainService, health, reflection, graceful shutdown
servicer.py    camserve.v1.ExplainService: requests -> batcher work items -> responses; request log
codec.py       request checks and proto <-> work items / results
batcher.py     dynamic batching of work items into runs of a runner function (knows no CAMs)
runner.py      the runner: one Explainer run per batch
models.py      the served models: discovery under the models root, name lookup, image decoding
errors.py      exceptions -> gRPC status codes, in one place
tensors.py     numpy <-> camserve.v1.Tensor (raw little-endian bytes)
overlay.py     PNG overlays of maps on their images
metrics.py     Prometheus metrics
healthcheck.py ``python -m camserve.service.healthcheck``: exit 0 when SERVING (container checks)
"""
