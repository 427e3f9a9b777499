"""A tiny .tflite writer for tests: one subgraph, assembled op by op with the project's codec."""
from __future__ import annotations

import numpy as np

from eq_tflite.io import codec as fb

S = fb.schema


class Builder:
    """One-subgraph ModelT assembled op by op (tensors by name)."""

    def __init__(self):
        self.m = S.ModelT()
        self.m.version = 3
        self.m.buffers = [S.BufferT()]
        self.m.operatorCodes = []
        self.sg = S.SubGraphT()
        self.sg.tensors, self.sg.operators = [], []
        self.m.subgraphs = [self.sg]
        self.index: dict[str, int] = {}

    def tensor(self, name: str, shape, ttype=S.TensorType.FLOAT32, data=None, sparsity=None) -> int:
        t = S.TensorT()
        t.name, t.shape, t.type = name.encode(), list(shape), ttype
        t.buffer, t.sparsity = 0, sparsity
        if data is not None:
            buf = S.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8).copy()
            self.m.buffers.append(buf)
            t.buffer = len(self.m.buffers) - 1
        self.sg.tensors.append(t)
        self.index[name] = len(self.sg.tensors) - 1
        return self.index[name]

    def code(self, builtin: int, custom: str | None = None, version: int = 1) -> int:
        c = S.OperatorCodeT()
        c.builtinCode, c.version = builtin, version
        c.deprecatedBuiltinCode = min(builtin, 127)
        c.customCode = custom.encode() if custom else None
        self.m.operatorCodes.append(c)
        return len(self.m.operatorCodes) - 1

    def op(self, code: int, inputs, outputs, options_type=0, options=None, custom=None):
        op = S.OperatorT()
        op.opcodeIndex = code
        op.inputs = [self.index[n] if isinstance(n, str) else n for n in inputs]
        op.outputs = [self.index[n] for n in outputs]
        op.builtinOptionsType, op.builtinOptions = options_type, options
        op.customOptions = custom
        self.sg.operators.append(op)

    def io(self, inputs, outputs) -> bytes:
        self.sg.inputs = [self.index[n] for n in inputs]
        self.sg.outputs = [self.index[n] for n in outputs]
        return fb.serialize_model(self.m)
