"""The load generator behind ``camserve bench``: requests for a camserve server (``workload``), sent by
client processes (``drivers``, over ``clients``) in closed or open loop, measured in windows until the
throughput is stable (``sweep``, ``stats``), with the server's own figures (``server_metrics``), the
in-process Explainer on the same images (``in_process``) and the reports (``report``)."""
