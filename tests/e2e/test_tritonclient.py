"""Triton's own HTTP client, with its defaults, on every model of the default fleet: through the
gateway and straight to each worker, binary tensors and JSON, against the plain JSON API."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as tritonhttp
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningFleet, call
from tests.e2e.conftest import DEFAULT_MODELS

pytestmark = pytest.mark.real_weights

TEXTS = ["My card payment was declined, I am furious", "Où est ma nouvelle carte ?"]


def _targets(fleet: RunningFleet) -> dict[str, tuple[str, list[str]]]:
    """The gateway and each worker: address (host:port, as tritonclient takes it) and models."""
    targets = {"gateway": (fleet.gateway.removeprefix("http://"), list(DEFAULT_MODELS))}
    for process in fleet.status()["processes"]:
        if process["role"] == "worker":
            targets[process["name"]] = (process["url"].removeprefix("http://"), process["models"])
    return targets


def _text_input() -> Any:
    tensor = tritonhttp.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))  # binary by default
    return tensor


def _as_values(array: np.ndarray, json_encoded: bool) -> list[Any]:
    values: list[Any] = array.tolist()
    if array.dtype == np.object_:
        values = [v.decode() if isinstance(v, bytes) else v for v in values]
        if json_encoded:
            values = [orjson.loads(v) for v in values]
    return values


def test_server_health_and_metadata_through_tritonclient(default_fleet: RunningFleet) -> None:
    for name, (url, models) in _targets(default_fleet).items():
        with tritonhttp.InferenceServerClient(url) as client:
            assert client.is_server_live(), name
            assert client.is_server_ready(), name
            assert "binary_tensor_data" in client.get_server_metadata()["extensions"], name
            for model in models:
                assert client.is_model_ready(model), (name, model)
                meta = client.get_model_metadata(model)
                assert meta["name"] == model
                assert meta["inputs"][0]["name"] == "text"
            with pytest.raises(InferenceServerException, match="nope"):
                client.get_model_metadata("nope")


def test_every_model_through_tritonclient_defaults_equals_plain_json(default_fleet: RunningFleet) -> None:
    gw = default_fleet.gateway
    for name, (url, models) in _targets(default_fleet).items():
        with tritonhttp.InferenceServerClient(url) as client:
            for model in models:
                meta = client.get_model_metadata(model)
                plain = call(f"{gw}/v1/models/{model}/predict", "POST", [{"text": t} for t in TEXTS])
                assert plain.status == 200, plain.body
                expected = plain.json()["outputs"]
                # The client's defaults: binary inputs, and every output in binary
                binary = client.infer(model, [_text_input()])
                # The same with every output asked for as JSON
                asked = [
                    tritonhttp.InferRequestedOutput(t["name"], binary_data=False) for t in meta["outputs"]
                ]
                as_json = client.infer(model, [_text_input()], outputs=asked)
                assert binary.get_response()["model_name"] == model
                for tensor in meta["outputs"]:
                    field = tensor["name"]
                    left, right = binary.as_numpy(field), as_json.as_numpy(field)
                    assert left is not None, (name, model, field)
                    assert right is not None, (name, model, field)
                    assert left.shape == right.shape, (name, model, field)
                    assert left.shape[0] == len(TEXTS)
                    if left.dtype == np.object_:
                        assert [_as_values(left[i : i + 1], False) for i in range(len(TEXTS))] == [
                            _as_values(right[i : i + 1], False) for i in range(len(TEXTS))
                        ], (name, model, field)
                    else:
                        assert left.dtype == right.dtype
                        assert np.array_equal(left, right), (name, model, field)
                    want = [out[field] for out in expected]
                    if left.dtype == np.object_:
                        # A BYTES element is the text itself, or JSON for values with no tensor form
                        for element, value in zip(_as_values(left, False), want, strict=True):
                            assert element == value or orjson.loads(element) == value, (name, model, field)
                    else:
                        got = np.array(left.tolist(), dtype=np.float64)
                        assert np.allclose(got, np.array(want, dtype=np.float64), atol=1e-5), (
                            name,
                            model,
                            field,
                        )


def test_intent_scores_and_embeddings_as_numpy(default_fleet: RunningFleet) -> None:
    url = default_fleet.gateway.removeprefix("http://")
    with tritonhttp.InferenceServerClient(url) as client:
        intent = client.infer("intent", [_text_input()])
        labels = [v.decode() for v in intent.as_numpy("label").tolist()]
        assert labels[0] == "declined_card_payment"
        scores = [orjson.loads(v) for v in intent.as_numpy("scores").tolist()]
        assert [len(s) for s in scores] == [3, 3]  # the default fleet asks intent for its top 3
        assert scores[0][0]["label"] == labels[0]
        assert scores[0][0]["score"] >= scores[0][1]["score"] >= scores[0][2]["score"]
        probabilities = intent.as_numpy("score")
        assert probabilities.dtype == np.float32
        assert np.allclose(probabilities, [s[0]["score"] for s in scores], atol=1e-6)

        binary = client.infer("embedder", [_text_input()]).as_numpy("embedding")
        asked = [tritonhttp.InferRequestedOutput("embedding", binary_data=False)]
        as_json = client.infer("embedder", [_text_input()], outputs=asked).as_numpy("embedding")
        assert binary.dtype == np.float32
        assert binary.shape == (2, 384)
        assert np.array_equal(binary, as_json)
        assert np.allclose(np.linalg.norm(binary, axis=1), 1.0, atol=1e-3)


def test_tritonclient_errors_are_clear_and_the_fleet_keeps_serving(default_fleet: RunningFleet) -> None:
    gw = default_fleet.gateway
    url = gw.removeprefix("http://")
    with tritonhttp.InferenceServerClient(url) as client:
        wrong = tritonhttp.InferInput("txt", [1], "BYTES")
        wrong.set_data_from_numpy(np.array([b"hi"], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="unknown input tensor 'txt'") as raised:
            client.infer("sentiment", [wrong])
        assert raised.value.status() == "422"
        empty = tritonhttp.InferInput("text", [1], "BYTES")
        empty.set_data_from_numpy(np.array([b""], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="text") as raised:
            client.infer("intent", [empty])  # intent's text must not be empty
        assert raised.value.status() == "422"
    # A binary body whose sizes do not add up is a 400 naming the problem, at the gateway as at a worker
    header = (
        b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":50}}]}'
    )
    bad = call(
        f"{gw}/v2/models/sentiment/infer",
        "POST",
        header + b"\x02\x00\x00\x00hi",
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert bad.status == 400
    assert "runs past the end of the body" in bad.json()["error"]
    past = call(
        f"{gw}/v2/models/sentiment/infer",
        "POST",
        header,
        headers={"inference-header-content-length": "100000"},
    )
    assert past.status == 400
    assert "past the end" in past.json()["error"]
    with tritonhttp.InferenceServerClient(url) as client:
        after = client.infer("sentiment", [_text_input()])
        assert after.as_numpy("label").tolist()[0] == b"negative"
