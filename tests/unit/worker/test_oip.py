from __future__ import annotations

import struct
from typing import Literal

import numpy as np
import orjson
import pytest
import tritonclient.http as tritonhttp
from pydantic import BaseModel

from modelfleet.errors import InvalidInput, MalformedRequest
from modelfleet.worker.oip import InferRequest, decode_request, encode_response, input_specs, output_specs


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
    specs = {s.name: (s.datatype, s.shape, s.json_encoded) for s in output_specs(Out)}
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
        ({"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["x", "y"]}, "does not fit"),
        ({"name": "text", "shape": [1, 1, 1], "datatype": "BYTES", "data": ["x"]}, "does not fit"),
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
    answer = encode_response("m", "1", Out, outs, InferRequest(id="q", inputs=[_tensor()]))
    assert answer.header_length is None
    body = orjson.loads(answer.body)
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
    assert [t["name"] for t in orjson.loads(encode_response("m", "1", Out, outs, only).body)["outputs"]] == [
        "score"
    ]
    wrong = InferRequest.model_validate({"inputs": [_tensor()], "outputs": [{"name": "nope"}]})
    with pytest.raises(InvalidInput, match="nope"):
        encode_response("m", "1", Out, outs, wrong)


def _tensor() -> dict[str, object]:
    return {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}


# --- the binary tensor data extension, framed and read by Triton's own client library -----------


class Item(BaseModel):
    label: str
    score: float


class Rich(BaseModel):
    """Every kind of output field: lists of objects, nested objects, optional values, numbers."""

    label: str
    scores: list[Item]
    best: Item
    note: str | None
    maybe: float | None
    count: int
    flag: bool
    vector: list[float]


class Ask(BaseModel):
    text: str
    top_k: int | None = None
    weights: list[float] = []


def _rich() -> list[Rich]:
    return [
        Rich(
            label="a",
            scores=[Item(label="a", score=0.75), Item(label="b", score=0.25)],
            best=Item(label="a", score=0.75),
            note=None,
            maybe=None,
            count=3,
            flag=True,
            vector=[0.5, -1.5, 2.0],
        ),
        Rich(
            label="b",
            scores=[],
            best=Item(label="b", score=1.0),
            note="hi",
            maybe=2.5,
            count=-1,
            flag=False,
            vector=[1.0, 2.0, 3.0],
        ),
    ]


def test_binary_inputs_framed_by_tritonclient_decode_like_json() -> None:
    # Given the body tritonclient builds with its defaults (binary_data=True for every input)
    texts = np.array([b"I love it", "d\u00e9j\u00e0 vu".encode()], dtype=np.object_)
    top_k = np.array([3, 0], dtype=np.int64)
    weights = np.array([[1.0, 2.0], [3.5, -4.0]], dtype=np.float32)
    inputs = []
    for name, array, datatype in (
        ("text", texts, "BYTES"),
        ("top_k", top_k, "INT64"),
        ("weights", weights, "FP32"),
    ):
        tensor = tritonhttp.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    body, header_length = tritonhttp.InferenceServerClient.generate_request_body(inputs)
    assert header_length is not None
    # When the worker decodes it
    request, rows = decode_request(body, Ask, str(header_length).encode())
    # Then the rows are what the arrays held
    assert rows == [
        {"text": "I love it", "top_k": 3, "weights": [1.0, 2.0]},
        {"text": "d\u00e9j\u00e0 vu", "top_k": 0, "weights": [3.5, -4.0]},
    ]
    assert request.parameters == {"binary_data_output": True}


def test_every_output_field_kind_round_trips_through_tritonclient_in_binary_and_json() -> None:
    outs = _rich()
    for binary in (True, False):
        request = InferRequest.model_validate(
            {"inputs": [_tensor()], "parameters": {"binary_data_output": binary}}
        )
        answer = encode_response("m", "1", Rich, outs, request)
        assert (answer.header_length is not None) is binary
        assert answer.content_type == (b"application/octet-stream" if binary else b"application/json")
        result = tritonhttp.InferenceServerClient.parse_response_body(
            answer.body, header_length=answer.header_length
        )

        def texts(name: str) -> list[str]:
            return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy(name).tolist()]  # noqa: B023

        assert texts("label") == ["a", "b"]
        assert [orjson.loads(v) for v in texts("scores")] == [
            [{"label": "a", "score": 0.75}, {"label": "b", "score": 0.25}],
            [],
        ]
        assert [orjson.loads(v) for v in texts("best")] == [
            {"label": "a", "score": 0.75},
            {"label": "b", "score": 1.0},
        ]
        assert [orjson.loads(v) for v in texts("note")] == [None, "hi"]
        assert [orjson.loads(v) for v in texts("maybe")] == [None, 2.5]
        assert result.as_numpy("count").tolist() == [3, -1]
        assert result.as_numpy("count").dtype == np.int64
        assert result.as_numpy("flag").tolist() == [True, False]
        vector = result.as_numpy("vector")
        assert vector.dtype == np.float32
        assert vector.shape == (2, 3)
        assert vector.tolist() == [[0.5, -1.5, 2.0], [1.0, 2.0, 3.0]]


def test_each_requested_output_chooses_binary_or_json() -> None:
    request = InferRequest.model_validate(
        {
            "inputs": [_tensor()],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "vector"}, {"name": "label", "parameters": {"binary_data": False}}],
        }
    )
    answer = encode_response("m", "1", Rich, _rich(), request)
    assert answer.header_length is not None
    header = orjson.loads(answer.body[: answer.header_length])
    tensors = {t["name"]: t for t in header["outputs"]}
    assert set(tensors) == {"vector", "label"}
    assert tensors["label"]["data"] == ["a", "b"]
    assert tensors["vector"]["parameters"] == {"binary_data_size": 24}
    assert "data" not in tensors["vector"]
    assert len(answer.body) == answer.header_length + 24
    # binary_data alone, without the request-wide default, also asks for binary
    only = InferRequest.model_validate(
        {"inputs": [_tensor()], "outputs": [{"name": "count", "parameters": {"binary_data": True}}]}
    )
    assert encode_response("m", "1", Rich, _rich(), only).header_length is not None


def _binary_body(header: dict[str, object], data: bytes) -> tuple[bytes, bytes]:
    head = orjson.dumps(header)
    return head + data, str(len(head)).encode()


def _text_tensor(size: int, shape: list[int] | None = None) -> dict[str, object]:
    return {
        "name": "text",
        "shape": shape or [1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": size},
    }


_ONE_TEXT = struct.pack("<I", 2) + b"hi"


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        ({"inputs": [_text_tensor(6)]}, _ONE_TEXT, None, "whatever"),
        ({"inputs": [_text_tensor(9)]}, _ONE_TEXT, None, "runs past the end of the body"),
        ({"inputs": [_text_tensor(3)]}, _ONE_TEXT, None, "belong to no input"),
        ({"inputs": [_text_tensor(5)]}, _ONE_TEXT[:5], None, "runs past the tensor's data"),
        ({"inputs": [_text_tensor(2)]}, b"\x01\x00", None, "ends inside an element's length"),
        ({"inputs": [_text_tensor(-1)]}, b"", None, "must be a count of bytes"),
        (
            {"inputs": [{**_text_tensor(6), "data": ["hi"]}]},
            _ONE_TEXT,
            None,
            "both data and binary_data_size",
        ),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}, b"", None, "neither data nor"),
        ({"inputs": [_text_tensor(6)]}, _ONE_TEXT, b"100000", "past the end of the"),
        ({"inputs": [_text_tensor(6)]}, _ONE_TEXT, b"0", "raw binary request"),
        ({"inputs": [_text_tensor(6)]}, _ONE_TEXT, b"ten", "must be a number of bytes"),
        (
            {
                "inputs": [
                    {
                        "name": "weights",
                        "shape": [1, 1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 3},
                    }
                ]
            },
            b"\x00\x00\x80",
            None,
            "not a multiple of 4 bytes",
        ),
    ],
)
def test_malformed_binary_bodies_are_malformed_requests(
    header: dict[str, object], data: bytes, length: bytes | None, message: str
) -> None:
    body, header_length = _binary_body(header, data)
    if message == "whatever":
        # the well-formed one of the set, so the others fail for the reason they name
        assert decode_request(body, In, header_length)[1] == [{"text": "hi"}]
        return
    with pytest.raises(MalformedRequest, match=message):
        decode_request(body, In, length or header_length)


def test_binary_data_sent_without_the_header_length_says_so() -> None:
    body, _ = _binary_body({"inputs": [_text_tensor(6)]}, _ONE_TEXT)
    with pytest.raises(MalformedRequest, match="needs the Inference-Header-Content-Length header"):
        decode_request(body, In)


def test_binary_values_that_do_not_fit_the_model_are_invalid_input() -> None:
    body, length = _binary_body({"inputs": [_text_tensor(6, [2])]}, _ONE_TEXT)
    with pytest.raises(InvalidInput, match="needs 2 values, got 1"):
        decode_request(body, In, length)
    raw = struct.pack("<I", 2) + b"\xff\xfe"
    body, length = _binary_body({"inputs": [_text_tensor(6)]}, raw)
    with pytest.raises(InvalidInput, match="UTF-8"):
        decode_request(body, In, length)


def test_a_batch_of_one_string_per_row_may_come_as_shape_n_by_1() -> None:
    body = _request(inputs=[{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["x", "y"]}])
    assert decode_request(body, In)[1] == [{"text": "x"}, {"text": "y"}]


def test_bf16_and_fp16_inputs_widen_to_floats() -> None:
    for datatype, raw in (
        ("FP16", np.array([1.5, -2.0], dtype="<f2").tobytes()),
        ("BF16", (np.array([1.5, -2.0], dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()),
    ):
        tensor = {
            "name": "weights",
            "shape": [1, 2],
            "datatype": datatype,
            "parameters": {"binary_data_size": 4},
        }
        body, length = _binary_body({"inputs": [tensor]}, raw)
        assert decode_request(body, In, length)[1] == [{"weights": [1.5, -2.0]}]


def test_requested_output_options_are_checked() -> None:
    bad = InferRequest.model_validate(
        {"inputs": [_tensor()], "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}
    )
    with pytest.raises(InvalidInput, match="binary_data must be true or false"):
        encode_response("m", "1", Rich, _rich(), bad)
    classify = InferRequest.model_validate(
        {"inputs": [_tensor()], "outputs": [{"name": "label", "parameters": {"classification": 2}}]}
    )
    with pytest.raises(InvalidInput, match="classification extension is not supported"):
        encode_response("m", "1", Rich, _rich(), classify)


def test_optional_inputs_keep_their_tensor_type_and_optional_outputs_travel_as_json() -> None:
    assert {s.name: s.datatype for s in input_specs(Ask)} == {
        "text": "BYTES",
        "top_k": "INT64",
        "weights": "FP32",
    }
    specs = {s.name: (s.datatype, s.json_encoded) for s in output_specs(Rich)}
    assert specs["maybe"] == ("BYTES", True)
    assert specs["note"] == ("BYTES", True)
    assert specs["scores"] == ("BYTES", True)
    assert specs["count"] == ("INT64", False)
