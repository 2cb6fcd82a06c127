"""camserve.service: the gRPC explanation service (``camserve serve``).

server.py        the grpc.aio server: both APIs, health, reflection, TLS / token, graceful shutdown
workers.py       ``--workers N``: N server processes on one port (SO_REUSEPORT), supervised
interceptors.py  every call's cross-cutting concerns: request parsing (malformed -> INVALID_ARGUMENT),
                 the open calls that shutdown ends with UNAVAILABLE
heap.py          freed memory back to the system after big requests (gc + malloc_trim, at most 1/s)
security.py      the server's TLS / mTLS credentials and bearer-token check (clients: camserve/wire.py)
servicer.py      camserve.v1.ExplainService: a thin front door (wire <-> the one request)
codec.py         camserve.v1 messages <-> the data plane's request and results
oip.py           inference.GRPCInferenceService (Open Inference Protocol, KServe v2): a thin front door
oip_codec.py     Open Inference Protocol messages <-> the data plane's request and results
dataplane.py     the one request path of both APIs: admission, logging, in-flight tracking, draining
admission.py     a request's cost from the request alone, checked against the [service] limits
cancellation.py  stopping work nobody waits for (deadlines, cancelled calls) at every stage
streams.py       bidirectional streams answered in completion order (both APIs)
batcher.py       dynamic batching of work items into runs of a runner function (knows no CAMs)
batch_runner.py  the batch runner: one Explainer run per batch of requests
models.py        the served models: discovery under the models root, name lookup, image decoding
errors.py        exceptions -> gRPC status codes, in one place
metrics.py       Prometheus metrics and their bounded HTTP endpoint
healthcheck.py   ``python -m camserve.service.healthcheck``: exit 0 when SERVING (container checks)
"""
