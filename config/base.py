"""What every settings block shares: strict models, DICOM ports and AE titles, located errors."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

Port = Annotated[int, Field(ge=1, le=65535)]
AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ]$")]


class Strict(BaseModel):
    """Base of every settings block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LocatedErrors(ValueError):  # noqa: N818 - pydantic turns a ValueError into an error
    """Problems at locations below the value being validated.

    ``items`` holds (location relative to the validated value, message); the
    loader reports each at its own ``FILE:LINE``.
    """

    def __init__(self, items: list[tuple[tuple[str | int, ...], str]]) -> None:
        self.items = items
        super().__init__("; ".join(message for _, message in items))
