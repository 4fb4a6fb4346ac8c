"""The base of every receipt record: frozen, strict, and written back as it was read.

Kept apart from :mod:`.records` so that the record families of other modules
(:mod:`.elastic.records`) share it without an import cycle.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Record(BaseModel):
    """Frozen and strict; fields in ``omit_unset`` are written only when they were given."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    omit_unset: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.omit_unset - self.model_fields_set:
                data.pop(name, None)
        return data

    def to_json(self) -> dict[str, object]:
        """The JSON form (as written into the receipt)."""
        out: dict[str, Any] = self.model_dump(mode="json")
        return out
