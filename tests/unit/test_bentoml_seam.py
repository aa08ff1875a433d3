"""The one private BentoML module the service uses (``_bentoml_sdk.io_models.IORootModel``, see
service.inputs.JSONAnswer), checked against the exact BentoML that bentofile.yaml pins."""

from __future__ import annotations

import asyncio
import json

from service.inputs import JSONAnswer


def test_json_answer_is_a_root_model_with_a_fixed_media_type():
    from _bentoml_sdk.io_models import IORootModel

    assert issubclass(JSONAnswer, IORootModel) and JSONAnswer.mime_type() == "application/json"


def test_bentoml_renders_a_json_answer_as_json():
    from _bentoml_impl.serde import JSONSerde

    answer = [{"label": "Ankle boot", "confidence": 0.5}]
    response = asyncio.run(JSONAnswer.to_http_response(answer, JSONSerde()))
    body = b"".join(bytes(chunk) for chunk in response.body_iterator)
    assert response.media_type == "application/json" and json.loads(body) == answer
