from __future__ import annotations

from typing import Literal

import orjson
import pytest
from pydantic import BaseModel

from modelfleet.errors import InvalidInput, MalformedRequest
from modelfleet.worker.oip import InferRequest, decode_request, encode_response, tensor_specs


class In(BaseModel):
    text: str
    weights: list[float]


class Out(BaseModel):
    label: Literal["a", "b"]
    score: float
    count: int
    flag: bool
    vector: list[float]
    extra: dict[str, int]


def _request(**body: object) -> bytes:
    return orjson.dumps(body)


def test_schema_fields_become_tensors() -> None:
    specs = {s.name: (s.datatype, s.shape, s.json_encoded) for s in tensor_specs(Out)}
    assert specs == {
        "label": ("BYTES", (-1,), False),
        "score": ("FP32", (-1,), False),
        "count": ("INT64", (-1,), False),
        "flag": ("BOOL", (-1,), False),
        "vector": ("FP32", (-1, -1), False),
        "extra": ("BYTES", (-1,), True),
    }


def test_decode_flat_and_nested_data_into_rows() -> None:
    body = _request(
        id="r1",
        inputs=[
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
            {"name": "weights", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]},
        ],
    )
    request, rows = decode_request(body, In)
    assert request.id == "r1"
    assert rows == [{"text": "x", "weights": [1, 2, 3]}, {"text": "y", "weights": [4, 5, 6]}]
    flat = _request(inputs=[{"name": "weights", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}])
    assert decode_request(flat, In)[1] == [{"weights": [1, 2]}, {"weights": [3, 4]}]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "nope", "shape": [1], "datatype": "BYTES", "data": ["x"]}, "unknown input tensor 'nope'"),
        ({"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x"]}, "needs 2 values, got 1"),
        ({"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}, "does not fit"),
        ({"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}, "must be BYTES"),
        ({"name": "weights", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}, "must be numeric"),
        ({"name": "weights", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}, "must be numbers"),
    ],
)
def test_tensors_that_do_not_fit_are_invalid_input(tensor: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_request(_request(inputs=[tensor]), In)


def test_batch_sizes_must_agree() -> None:
    body = _request(
        inputs=[
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]},
            {"name": "weights", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]},
        ]
    )
    with pytest.raises(InvalidInput, match="batch size 2 differs"):
        decode_request(body, In)


def test_not_json_or_not_an_inference_request_is_malformed() -> None:
    with pytest.raises(MalformedRequest, match="malformed JSON"):
        decode_request(b"{not json", In)
    with pytest.raises(MalformedRequest, match="inputs"):
        decode_request(b'{"instances": []}', In)


def test_encode_columns_with_shapes_and_requested_outputs() -> None:
    outs = [
        Out(label="a", score=0.5, count=1, flag=True, vector=[1.0, 2.0], extra={"k": 1}),
        Out(label="b", score=0.25, count=2, flag=False, vector=[3.0, 4.0], extra={}),
    ]
    body = orjson.loads(encode_response("m", "1", Out, outs, InferRequest(id="q", inputs=[_tensor()])))
    assert body["model_name"] == "m"
    assert body["id"] == "q"
    tensors = {t["name"]: t for t in body["outputs"]}
    assert tensors["vector"] == {
        "name": "vector",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [1.0, 2.0, 3.0, 4.0],
    }
    assert tensors["label"]["data"] == ["a", "b"]
    assert tensors["flag"]["data"] == [True, False]
    assert [orjson.loads(v) for v in tensors["extra"]["data"]] == [{"k": 1}, {}]
    only = InferRequest.model_validate({"inputs": [_tensor()], "outputs": [{"name": "score"}]})
    assert [t["name"] for t in orjson.loads(encode_response("m", "1", Out, outs, only))["outputs"]] == [
        "score"
    ]
    wrong = InferRequest.model_validate({"inputs": [_tensor()], "outputs": [{"name": "nope"}]})
    with pytest.raises(InvalidInput, match="nope"):
        encode_response("m", "1", Out, outs, wrong)


def _tensor() -> dict[str, object]:
    return {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}
