"""The ``write`` block of a tag's config as a pydantic model (drivers/write.py says what
it means and checks values against it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["WriteSpec"]


class WriteSpec(BaseModel):
    """A tag's ``write`` block."""

    # defer_build: no validator of its own until one is used directly; the gateway's
    # config validator holds this model's checks too (0.6 MiB for every protocol's models)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    allowed: bool = Field(
        True,
        description="the block makes the tag writable; false keeps the limits but refuses "
        "every write (e.g. during commissioning)",
    )
    min: float | None = Field(
        None, allow_inf_nan=False, description="smallest value a command may set (engineering)"
    )
    max: float | None = Field(
        None, allow_inf_nan=False, description="largest value a command may set (engineering)"
    )
    values: list[bool | int | float | str] | None = Field(
        None,
        min_length=1,
        description="the only values a command may set (enum states, or [false] for a bool)",
    )
    min_interval_s: float = Field(
        1.0,
        ge=0,
        le=86400,
        allow_inf_nan=False,
        description="shortest time between two writes of this tag (0: no limit)",
    )

    @model_validator(mode="after")
    def _range(self) -> WriteSpec:
        if (self.min is None) != (self.max is None):
            raise ValueError("write: give min and max together (the range a command may set)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"write: min {self.min:g} is above max {self.max:g}")
        return self
