"""Open Inference Protocol (KServe v2) tensors <-> a model's typed inputs and outputs.

Each field of a model's pydantic input or output is one tensor named after the field; the first
dimension is the batch. Scalars map to 1-D tensors, lists of numbers to 2-D ones. Values with no
tensor form (objects, lists of objects, and on outputs anything that may be null) travel as BYTES
elements holding JSON.

Tensor data comes as JSON (``data``) or, with the binary tensor data extension that Triton's
clients use by default, as raw bytes after the JSON header: the ``Inference-Header-Content-Length``
HTTP header gives the header's length and each binary input's ``parameters.binary_data_size`` its
share of the rest, little-endian and row-major, BYTES elements each prefixed by a 4-byte length.
Outputs are returned the same way when the request asks (``binary_data`` on an output, or
``binary_data_output`` on the request).
"""

from __future__ import annotations

import functools
import struct
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from modelfleet.errors import InvalidInput, MalformedRequest
from modelfleet.types import JSON_CONTENT_TYPE, OCTET_STREAM

EXTENSIONS = ["binary_tensor_data"]


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
# Little-endian numpy dtypes of the protocol's fixed-size datatypes (BF16 is widened by hand).
_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_NUMERIC = (set(_DTYPES) - {"BOOL"}) | {"BF16"}
_LENGTH = struct.Struct("<I")


def _scalar_datatype(annotation: Any) -> str | None:
    if annotation in _SCALAR_TYPES:
        return _SCALAR_TYPES[annotation]
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        if values and all(isinstance(v, str) for v in values):
            return "BYTES"
    return None


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether it allowed None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(args)
    return annotation, False


def _specs(schema: type[BaseModel], nullable_as_json: bool) -> list[TensorSpec]:
    specs = []
    for name, field in schema.model_fields.items():
        annotation, nullable = _strip_optional(field.annotation)
        if nullable and nullable_as_json:
            # A typed tensor has no null element; JSON keeps "no value" apart from 0 or "".
            specs.append(TensorSpec(name, "BYTES", (-1,), json_encoded=True))
            continue
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


@functools.cache
def input_specs(schema: type[BaseModel]) -> list[TensorSpec]:
    """The tensors a request may send for ``schema``'s fields, in field order.

    An optional scalar field keeps its typed tensor: leaving the tensor out gives the default.
    """
    return _specs(schema, nullable_as_json=False)


@functools.cache
def output_specs(schema: type[BaseModel]) -> list[TensorSpec]:
    """The tensors an answer holds for ``schema``'s fields; fields that may be None are JSON BYTES."""
    return _specs(schema, nullable_as_json=True)


@functools.cache
def _json_adapters(schema: type[BaseModel]) -> dict[str, TypeAdapter[Any]]:
    """Serializers for the output fields that travel as JSON (lists of objects, nested objects, None)."""
    return {
        spec.name: TypeAdapter(schema.model_fields[spec.name].annotation or Any)
        for spec in output_specs(schema)
        if spec.json_encoded
    }


class _RequestTensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class _RequestOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """The v2 inference request envelope."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_RequestTensor] = Field(min_length=1)
    outputs: list[_RequestOutput] | None = None


@dataclass(frozen=True)
class InferResponse:
    """An encoded v2 answer: ``header_length`` is set when binary tensor data follows the JSON."""

    body: bytes
    header_length: int | None = None

    @property
    def content_type(self) -> bytes:
        return OCTET_STREAM if self.header_length is not None else JSON_CONTENT_TYPE


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


def _split_body(body: bytes, header_length: bytes | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise MalformedRequest(
            f"Inference-Header-Content-Length must be a number of bytes, got {header_length!r}"
        ) from None
    if length <= 0:
        raise MalformedRequest(
            "Inference-Header-Content-Length must be at least 1: a body without a JSON inference "
            "header (a raw binary request) is not supported"
        )
    if length > len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length of {length} bytes is past the end of the {len(body)}-byte body"
        )
    return body[:length], memoryview(body)[length:]


def _binary_slices(request: InferRequest, binary: memoryview) -> dict[int, memoryview]:
    """Each binary input's bytes, by position; raises MalformedRequest when the sizes do not add up."""
    slices: dict[int, memoryview] = {}
    offset = 0
    for index, tensor in enumerate(request.inputs):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise MalformedRequest(
                    f"input tensor {tensor.name!r} has neither data nor parameters.binary_data_size"
                )
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MalformedRequest(
                f"input tensor {tensor.name!r}: binary_data_size must be a count of bytes, got {size!r}"
            )
        if tensor.data is not None:
            raise MalformedRequest(f"input tensor {tensor.name!r} has both data and binary_data_size")
        if offset + size > len(binary):
            raise MalformedRequest(
                f"input tensor {tensor.name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes of binary data left)"
            )
        slices[index] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise MalformedRequest(
            f"{len(binary) - offset} bytes after the JSON header belong to no input "
            "(the inputs' binary_data_size add up to less than the binary data sent)"
        )
    return slices


def _decode_bytes_elements(name: str, data: memoryview) -> list[bytes]:
    elements = []
    offset = 0
    end = len(data)
    while offset < end:
        if offset + 4 > end:
            raise MalformedRequest(f"input tensor {name!r}: BYTES data ends inside an element's length")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + size > end:
            raise MalformedRequest(
                f"input tensor {name!r}: a BYTES element of {size} bytes runs past the tensor's data"
            )
        elements.append(bytes(data[offset : offset + size]))
        offset += size
    return elements


def _decode_binary(tensor: _RequestTensor, data: memoryview) -> list[Any]:
    if tensor.datatype == "BYTES":
        return _decode_bytes_elements(tensor.name, data)
    if tensor.datatype == "BF16":
        if len(data) % 2:
            raise MalformedRequest(
                f"input tensor {tensor.name!r}: {len(data)} bytes is not a whole BF16 count"
            )
        widened = np.frombuffer(data, dtype="<u2").astype("<u4") << 16
        return list(widened.view("<f4").tolist())
    dtype = _DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"input tensor {tensor.name!r}: unknown datatype {tensor.datatype!r}")
    itemsize = np.dtype(dtype).itemsize
    if len(data) % itemsize:
        raise MalformedRequest(
            f"input tensor {tensor.name!r}: binary_data_size {len(data)} is not a multiple of "
            f"{itemsize} bytes ({tensor.datatype})"
        )
    return list(np.frombuffer(data, dtype=dtype).tolist())


def _as_text(name: str, values: list[Any]) -> list[Any]:
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    except UnicodeDecodeError:
        raise InvalidInput(f"input tensor {name!r}: BYTES elements must be UTF-8 text") from None


def _fits(tensor_shape: list[int], spec: TensorSpec) -> bool:
    if any(d < 0 for d in tensor_shape):
        return False
    if len(tensor_shape) == len(spec.shape):
        return True
    # [batch, 1] for a per-row scalar: the shape many Triton clients send for one string per row.
    return len(spec.shape) == 1 and len(tensor_shape) == 2 and tensor_shape[1] == 1


def decode_request(
    body: bytes, input_type: type[BaseModel], header_length: bytes | None = None
) -> tuple[InferRequest, list[dict[str, Any]]]:
    """Parse a v2 request into the envelope and one plain dict per batch row.

    ``header_length`` is the Inference-Header-Content-Length header, when binary tensor data
    follows the JSON. Raises MalformedRequest for bodies that are not a v2 request or whose binary
    data does not add up, InvalidInput for tensors that do not fit the model's schema (wrong
    name, datatype or shape).
    """
    header, binary = _split_body(body, header_length)
    try:
        request = InferRequest.model_validate_json(header)
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            message = err.errors()[0]["msg"]
            if header_length is None and "trailing characters" in message:
                message += " (binary tensor data needs the Inference-Header-Content-Length header)"
            raise MalformedRequest(f"malformed JSON: {message}") from None
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MalformedRequest(f"not an inference request: {where}: {first['msg']}") from None
    slices = _binary_slices(request, binary)
    specs = {spec.name: spec for spec in input_specs(input_type)}
    columns: dict[str, list[Any]] = {}
    batch: int | None = None
    for index, tensor in enumerate(request.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"unknown input tensor {tensor.name!r}; the model takes {sorted(specs)}")
        if tensor.name in columns:
            raise InvalidInput(f"input tensor {tensor.name!r} given twice")
        if not _fits(tensor.shape, spec):
            raise InvalidInput(
                f"input tensor {tensor.name!r}: shape {tensor.shape} does not fit {list(spec.shape)}"
            )
        if index in slices:
            values = _decode_binary(tensor, slices[index])
        else:
            assert tensor.data is not None  # _binary_slices refuses a tensor with neither
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
            except (orjson.JSONDecodeError, TypeError):
                raise InvalidInput(f"input tensor {tensor.name!r}: BYTES values must hold JSON") from None
        elif spec.datatype == "BYTES":
            values = _as_text(tensor.name, values)
        columns[tensor.name] = values
    assert batch is not None  # at least one input is guaranteed by the envelope
    return request, [{name: col[i] for name, col in columns.items()} for i in range(batch)]


def _flag(parameters: dict[str, Any] | None, key: str, where: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{where}: parameters.{key} must be true or false, got {value!r}")


def _wanted_outputs(request: InferRequest) -> dict[str, bool] | None:
    """The requested outputs and whether each goes in binary; None for all outputs as JSON or binary."""
    if not request.outputs:
        return None
    default = bool(_flag(request.parameters, "binary_data_output", "the request"))
    wanted: dict[str, bool] = {}
    for output in request.outputs:
        where = f"requested output {output.name!r}"
        if (output.parameters or {}).get("classification") is not None:
            raise InvalidInput(f"{where}: the classification extension is not supported; ask for the tensor")
        binary = _flag(output.parameters, "binary_data", where)
        wanted[output.name] = default if binary is None else binary
    return wanted


def _pack(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in data:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.asarray(data, dtype=_DTYPES[datatype]).tobytes()


def encode_response(
    model_name: str,
    model_version: str,
    output_type: type[BaseModel],
    outputs: list[BaseModel],
    request: InferRequest,
) -> InferResponse:
    """Encode ``outputs`` as a v2 answer, keeping only the tensors the request asked for, each as
    JSON or binary as asked."""
    wanted = _wanted_outputs(request)
    all_binary = bool(_flag(request.parameters, "binary_data_output", "the request"))
    adapters = _json_adapters(output_type)
    tensors = []
    blobs: list[bytes] = []
    for spec in output_specs(output_type):
        if wanted is not None and spec.name not in wanted:
            continue
        binary = wanted[spec.name] if wanted is not None else all_binary
        column = [getattr(out, spec.name) for out in outputs]
        datatype = spec.datatype
        if spec.json_encoded:
            adapter = adapters[spec.name]
            data: list[Any] = [adapter.dump_json(v) for v in column]
            if not binary:
                data = [v.decode() for v in data]
            shape = [len(column)]
        elif len(spec.shape) == 2:
            width = len(column[0]) if column else 0
            if any(len(row) != width for row in column):
                # Rows of different lengths have no 2-D tensor form: each row travels as JSON.
                datatype, shape = "BYTES", [len(column)]
                data = [orjson.dumps(row) if binary else orjson.dumps(row).decode() for row in column]
            else:
                data = [v for row in column for v in row]
                shape = [len(column), width]
        else:
            data = column
            shape = [len(column)]
        tensor: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": shape}
        if binary:
            blob = _pack(datatype, data)
            blobs.append(blob)
            tensor["parameters"] = {"binary_data_size": len(blob)}
        else:
            tensor["data"] = data
        tensors.append(tensor)
    if wanted is not None:
        missing = set(wanted) - {t["name"] for t in tensors}
        if missing:
            raise InvalidInput(f"unknown output tensor(s) requested: {sorted(missing)}")
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body)
    if not blobs:
        return InferResponse(header)
    return InferResponse(header + b"".join(blobs), header_length=len(header))
