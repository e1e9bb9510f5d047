"""Open Inference Protocol (KServe v2) tensors <-> a model's typed inputs and outputs.

Each field of a model's pydantic input or output is one tensor named after the field; the first
dimension is the batch. Scalars map to 1-D tensors, lists of numbers to 2-D ones. Values with no
tensor form travel as BYTES holding JSON.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet.errors import InvalidInput, MalformedRequest


@dataclass(frozen=True)
class TensorSpec:
    """How one field of a model's schema looks as a tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    json_encoded: bool = False

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


_SCALAR_TYPES: dict[Any, str] = {str: "BYTES", float: "FP32", int: "INT64", bool: "BOOL"}
_NUMERIC = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def _scalar_datatype(annotation: Any) -> str | None:
    if annotation in _SCALAR_TYPES:
        return _SCALAR_TYPES[annotation]
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        if values and all(isinstance(v, str) for v in values):
            return "BYTES"
    return None


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def tensor_specs(schema: type[BaseModel]) -> list[TensorSpec]:
    """The tensors that stand for ``schema``'s fields, in field order."""
    specs = []
    for name, field in schema.model_fields.items():
        annotation = _strip_optional(field.annotation)
        scalar = _scalar_datatype(annotation)
        if scalar is not None:
            specs.append(TensorSpec(name, scalar, (-1,)))
            continue
        if typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation) or (Any,)
            inner = _scalar_datatype(item)
            if inner is not None:
                specs.append(TensorSpec(name, inner, (-1, -1)))
                continue
        specs.append(TensorSpec(name, "BYTES", (-1,), json_encoded=True))
    return specs


class _RequestTensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class _RequestOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class InferRequest(BaseModel):
    """The v2 inference request envelope."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_RequestTensor] = Field(min_length=1)
    outputs: list[_RequestOutput] | None = None


def _flatten(data: list[Any]) -> list[Any]:
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _check_datatype(tensor: _RequestTensor, spec: TensorSpec, values: list[Any]) -> None:
    if spec.datatype == "BYTES":
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input tensor {tensor.name!r}: datatype must be BYTES, got {tensor.datatype}")
        return
    if spec.datatype == "BOOL":
        if tensor.datatype != "BOOL":
            raise InvalidInput(f"input tensor {tensor.name!r}: datatype must be BOOL, got {tensor.datatype}")
        return
    if tensor.datatype not in _NUMERIC:
        raise InvalidInput(
            f"input tensor {tensor.name!r}: datatype must be numeric ({spec.datatype}), got {tensor.datatype}"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"input tensor {tensor.name!r}: {tensor.datatype} data must be numbers")


def decode_request(body: bytes, input_type: type[BaseModel]) -> tuple[InferRequest, list[dict[str, Any]]]:
    """Parse a v2 request into the envelope and one plain dict per batch row.

    Raises MalformedRequest for bodies that are not a v2 request, InvalidInput for tensors that do
    not fit the model's schema (wrong name, datatype or shape).
    """
    try:
        request = InferRequest.model_validate_json(body)
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise MalformedRequest(f"malformed JSON: {err.errors()[0]['msg']}") from None
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MalformedRequest(f"not an inference request: {where}: {first['msg']}") from None
    specs = {spec.name: spec for spec in tensor_specs(input_type)}
    columns: dict[str, list[Any]] = {}
    batch: int | None = None
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"unknown input tensor {tensor.name!r}; the model takes {sorted(specs)}")
        if tensor.name in columns:
            raise InvalidInput(f"input tensor {tensor.name!r} given twice")
        if len(tensor.shape) != len(spec.shape) or any(d < 0 for d in tensor.shape):
            raise InvalidInput(
                f"input tensor {tensor.name!r}: shape {tensor.shape} does not fit {list(spec.shape)}"
            )
        values = _flatten(tensor.data)
        expected = 1
        for dim in tensor.shape:
            expected *= dim
        if expected != len(values):
            raise InvalidInput(
                f"input tensor {tensor.name!r}: shape {tensor.shape} needs {expected} values, "
                f"got {len(values)}"
            )
        _check_datatype(tensor, spec, values)
        rows = tensor.shape[0]
        if batch is None:
            batch = rows
        elif rows != batch:
            raise InvalidInput(
                f"input tensor {tensor.name!r}: batch size {rows} differs from the other inputs' {batch}"
            )
        if len(spec.shape) == 2:
            width = tensor.shape[1]
            values = [values[i * width : (i + 1) * width] for i in range(rows)]
        elif spec.json_encoded:
            try:
                values = [orjson.loads(v) for v in values]
            except orjson.JSONDecodeError:
                raise InvalidInput(f"input tensor {tensor.name!r}: BYTES values must hold JSON") from None
        columns[tensor.name] = values
    assert batch is not None  # at least one input is guaranteed by the envelope
    return request, [{name: col[i] for name, col in columns.items()} for i in range(batch)]


def encode_response(
    model_name: str,
    model_version: str,
    output_type: type[BaseModel],
    outputs: list[BaseModel],
    request: InferRequest,
) -> bytes:
    """Encode ``outputs`` as a v2 response, keeping only the tensors the request asked for."""
    wanted = {o.name for o in request.outputs} if request.outputs else None
    tensors = []
    for spec in tensor_specs(output_type):
        if wanted is not None and spec.name not in wanted:
            continue
        column = [getattr(out, spec.name) for out in outputs]
        if spec.json_encoded:
            data: list[Any] = [
                orjson.dumps(v.model_dump() if isinstance(v, BaseModel) else v).decode() for v in column
            ]
            shape = [len(column)]
        elif len(spec.shape) == 2:
            width = len(column[0]) if column else 0
            if any(len(row) != width for row in column):
                data = [orjson.dumps(row).decode() for row in column]
                tensors.append({"name": spec.name, "datatype": "BYTES", "shape": [len(column)], "data": data})
                continue
            data = [v for row in column for v in row]
            shape = [len(column), width]
        else:
            data = column
            shape = [len(column)]
        tensors.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data})
    if wanted is not None:
        missing = wanted - {t["name"] for t in tensors}
        if missing:
            raise InvalidInput(f"unknown output tensor(s) requested: {sorted(missing)}")
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    return orjson.dumps(body)
