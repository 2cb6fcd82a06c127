"""The one way results leave a GPU: ``to_host`` copies a batch's tensors (logits, target ids, every
method's maps) to the host together, once per batch.

On CUDA each tensor is copied with ``non_blocking=True`` into pinned (page-locked) host memory on a
stream of the caller's own (``HostCopyStreams``: one per Explainer, so one per service worker), after
that stream waits for the caller's current stream (an event, no host wait); then the host waits once,
on an event recorded after the last copy. Nothing waits on the legacy default stream, so encoding one
batch does not wait for the work another thread has queued since. CPU tensors are returned as they
are (no copy). Tests count the device-to-host copies per batch by wrapping this function: callers use
it as ``hostcopy.to_host(...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TypeVar

import torch

K = TypeVar("K")


class HostCopyStreams:
    """A CUDA stream per device for the copies of one owner (an Explainer), created on first use."""

    def __init__(self) -> None:
        self._streams: dict[int, torch.cuda.Stream] = {}
        self._lock = threading.Lock()

    def get(self, device: torch.device) -> torch.cuda.Stream:
        index = device.index if device.index is not None else torch.cuda.current_device()
        with self._lock:
            if index not in self._streams:
                self._streams[index] = torch.cuda.Stream(torch.device("cuda", index))
            return self._streams[index]


def to_host(
    tensors: Mapping[K, torch.Tensor], streams: HostCopyStreams | None = None
) -> dict[K, torch.Tensor]:
    """``tensors`` on the host, same keys and order: one asynchronous copy each from a GPU into pinned
    memory on ``streams``' stream (None: the current stream), then one host wait per device."""
    out: dict[K, torch.Tensor] = {}
    by_device: dict[torch.device, list[K]] = {}
    for key, tensor in tensors.items():
        if tensor.device.type == "cuda":
            by_device.setdefault(tensor.device, []).append(key)
        else:
            out[key] = tensor.detach()
    for device, keys in by_device.items():
        caller = torch.cuda.current_stream(device)
        stream = streams.get(device) if streams is not None else caller
        stream.wait_stream(caller)  # the tensors were written on the caller's stream
        with torch.cuda.stream(stream):
            for key in keys:
                source = tensors[key].detach()
                host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
                host.copy_(source, non_blocking=True)
                out[key] = host
            done = torch.cuda.Event()
            done.record(stream)
        done.synchronize()  # the one host wait of this batch on this device
    return {key: out[key] for key in tensors}
