"""The named weights of an ONNX file, read with numpy alone (no ``onnx`` package): a minimal protobuf reader.

It handles what the two graphs of ``benchmarks/pretrained.py`` use: initializer tensors with raw or float data
(float32/16/64, int32/64) and the graph's nodes. The exports leave MatMul weights anonymous (``onnx::MatMul_470``);
each is named after the bias that the graph adds right after it (``...query.bias`` -> ``...query.weight``) and
transposed to ``nn.Linear``'s (out, in) layout. Checked against onnxruntime running the original graphs (issue 14:
q, k, v within 4e-5, final hidden states within 4e-5).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["load_onnx_weights"]

_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message; value is an int or a memoryview."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _packed(buf: memoryview) -> Iterator[int]:
    i = 0
    while i < len(buf):
        value, i = _varint(buf, i)
        yield value


def _tensor(buf: memoryview) -> tuple[str, np.ndarray]:
    """TensorProto: dims (1), data_type (2), float_data (4), name (8), raw_data (9), data_location (14)."""
    dims, dtype, name, raw, floats = [], 1, "", None, None
    for number, wire, value in _fields(buf):
        if number == 1:
            dims += [value] if wire == 0 else list(_packed(value))
        elif number == 2:
            dtype = value
        elif number == 4:
            floats = np.frombuffer(value, np.float32) if wire == 2 else np.frombuffer(value, np.float32)[:1]
        elif number == 8:
            name = bytes(value).decode()
        elif number == 9:
            raw = value
        elif number == 14 and value == 1:
            raise ValueError(f"{name}: weights stored outside the .onnx file are not supported")
    if raw is not None:
        array = np.frombuffer(raw, _DTYPES[dtype]).copy()
    elif floats is not None:
        array = floats.astype(np.float32)
    else:
        array = np.zeros(0, _DTYPES.get(dtype, np.float32))
    return name, array.reshape(dims)


def _node(buf: memoryview) -> tuple[str, list[str], list[str]]:
    """NodeProto: input (1), output (2), op_type (4)."""
    inputs, outputs, op = [], [], ""
    for number, _, value in _fields(buf):
        if number == 1:
            inputs.append(bytes(value).decode())
        elif number == 2:
            outputs.append(bytes(value).decode())
        elif number == 4:
            op = bytes(value).decode()
    return op, inputs, outputs


def load_onnx_weights(path: str) -> dict[str, np.ndarray]:
    """{name: array} of the graph's initializers; anonymous MatMul weights named after their bias, as (out, in)."""
    with open(path, "rb") as fh:
        model = memoryview(fh.read())
    graph = next(value for number, _, value in _fields(model) if number == 7)  # ModelProto.graph
    init, nodes = {}, []
    for number, _, value in _fields(graph):
        if number == 5:  # GraphProto.initializer
            name, array = _tensor(value)
            init[name] = array
        elif number == 1:  # GraphProto.node
            nodes.append(_node(value))
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node[1]:
            consumers.setdefault(name, []).append(node)
    weights = {name: a for name, a in init.items() if not name.startswith("onnx::MatMul")}
    for op, inputs, outputs in nodes:
        matrix = [x for x in inputs if x.startswith("onnx::MatMul") and x in init]
        if op != "MatMul" or not matrix:
            continue
        biases = [x for op2, ins2, _ in consumers.get(outputs[0], []) if op2 == "Add" for x in ins2
                  if x in init and x.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"cannot name the MatMul weight {matrix[0]}: {len(biases)} biases follow it")
        weights[biases[0][: -len("bias")] + "weight"] = np.ascontiguousarray(init[matrix[0]].T)
    return weights
