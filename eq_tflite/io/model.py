"""One model handle: a .tflite model parsed and checked once, edited in place, serialized once.

A stage that reads a model and a later stage that edits it share one
:class:`TfliteModel` instead of each parsing (and re-checking) the bytes and
serializing its own copy: TFLite's int8 model is parsed once, the rewriter
and the INT4 packer edit that ``ModelT``, and the result is serialized once.
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np

from eq_tflite.io import codec as fb


class TfliteModel:
    """A checked ``ModelT`` (``model``) and its .tflite bytes (``to_bytes``).

    Built only from bytes, which :func:`eq_tflite.io.codec.parse_model` decodes
    and checks. Until :meth:`edit` is called, ``to_bytes`` returns those bytes
    unchanged; after it, the edited model serialized once (cached until the next
    :meth:`edit`), without the buffers no tensor or metadata refers to any more
    (an edit that gives a tensor a new buffer leaves its old one behind).
    """

    def __init__(self, data: bytes, what: str = "model") -> None:
        self._bytes: bytes | None = bytes(data)
        self._model = fb.parse_model(self._bytes, what)

    @classmethod
    def of(cls, model: "TfliteLike", what: str = "model") -> "TfliteModel":
        """``model`` if it is a handle already (no parse), else a handle parsed from its bytes."""
        return model if isinstance(model, TfliteModel) else cls(model, what)

    @property
    def model(self) -> Any:
        """The ``ModelT``, to read (edit it through :meth:`edit`)."""
        return self._model

    def edit(self) -> Any:
        """The ``ModelT``, to edit in place: ``to_bytes`` serializes it again."""
        self._bytes = None
        return self._model

    def to_bytes(self) -> bytes:
        """The model's .tflite bytes (serialized at most once per round of edits)."""
        if self._bytes is None:
            fb.drop_unused_buffers(self._model)
            self._bytes = fb.serialize_model(self._model)
        return self._bytes

    def metadata(self, name: str) -> bytes | None:
        """The data of the metadata entry ``name``, or None."""
        model = self._model
        for m in model.metadata or []:
            if fb.text(m.name) == name:
                return bytes(np.asarray(model.buffers[m.buffer].data, np.uint8))
        return None


#: What the stages that read a model accept: its bytes, or a handle already parsed.
TfliteLike = Union[bytes, TfliteModel]


def as_bytes(model: TfliteLike) -> bytes:
    """The .tflite bytes of ``model`` (a handle's, or the bytes themselves: never parsed)."""
    return model.to_bytes() if isinstance(model, TfliteModel) else model
