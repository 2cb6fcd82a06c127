"""The OIP request decoder fuzzed in process (``service.oip_codec.decode_infer_request``). Not
collected with the suite: ``test_fuzz_decoders.py`` runs this file in a subprocess, because the decoder
needs camserve's ``inference`` stubs and the suite's process holds tritonclient's (see
camserve.inference)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from camserve.config import CamserveConfig
from camserve.inference import grpc_service_pb2 as ip
from tests.service.fuzz_strategies import IN_PROCESS, assert_client_error_or_ok, decode_fully, infer_requests
from tests.service.service_helpers import MODEL


@pytest.fixture(scope="module")
def served(models_root: Path):
    from camserve.service.models import ModelRegistry, discover_models

    config = CamserveConfig.load(env={})
    registry = ModelRegistry.load(discover_models(models_root), config)
    return registry.get(MODEL), config


@IN_PROCESS
@given(request=infer_requests(ip))
def test_the_infer_decoder_answers_any_request_with_a_client_error_or_ok(served, request):
    from camserve.service.oip_codec import decode_infer_request

    assert_client_error_or_ok(lambda: decode_fully(decode_infer_request, request, *served))
