"""The data contract: what one store, one registered model and every version of it agree on.

A contract is the channels a model reads and forecasts (in order), the step between
observations, and the gap policy (how many missing steps are interpolated before a series is
split, and the open hours of series with recurring closed periods: their text form, see
:class:`pipeline.open_steps.OpenHours`; None when every step exists). The training data
carries the contract it was prepared under, the model config carries it (its ``channels``,
``freq``, ``max_gap`` and ``open_hours``), and the registered model records it as a tag,
so a version of another contract never replaces the champion. The defaults are written here
and nowhere else.

>>> contract = DataContract(("load", "temp"), "1h")
>>> contract.max_gap, DataContract.from_tag(contract.tag()) == contract
(3, True)
>>> business = DataContract(("load",), "5min", open_hours="mon-fri 08:00-22:00")
>>> DataContract.from_tag(business.tag()) == business
True
>>> DataContract(("load",), "5min").differences(business)
["open_hours None -> 'mon-fri 08:00-22:00'"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

# The step of a model when nothing says otherwise (an empty config, a series with one reading).
DEFAULT_FREQ = "1h"
# Gaps of up to this many steps are interpolated; longer ones split a series.
DEFAULT_MAX_GAP = 3


@dataclass(frozen=True)
class DataContract:
    """Channels (in order), the step (a pandas frequency) and the gap policy of one model."""

    channels: tuple[str, ...]
    freq: str = DEFAULT_FREQ
    max_gap: int = DEFAULT_MAX_GAP
    # The weekly open hours the series live on (OpenHours.to_text); None: every step exists.
    open_hours: str | None = None

    def describe(self) -> str:
        opened = f", open {self.open_hours} (UTC)" if self.open_hours else ""
        return (
            f"channels {list(self.channels)[:8]} every {self.freq}, gaps over {self.max_gap} split"
            + opened
        )

    def differences(self, other: DataContract) -> list[str]:
        """What ``other`` changes, e.g. ``["max_gap 3 -> 6"]``; "1h" and "h" are one step."""
        changed = [
            f"{name} {getattr(self, name)!r} -> {getattr(other, name)!r}"
            for name in ("channels", "max_gap", "open_hours")
            if getattr(self, name) != getattr(other, name)
        ]
        if step_of(self.freq) != step_of(other.freq):
            changed.append(f"freq {self.freq!r} -> {other.freq!r}")
        return changed

    def tag(self) -> str:
        """The contract as the registered model's tag records it (JSON); ``open_hours`` only
        when set, so a contract of every step reads as it did before open hours existed."""
        fields = {"channels": list(self.channels), "freq": self.freq, "max_gap": self.max_gap}
        if self.open_hours is not None:
            fields["open_hours"] = self.open_hours
        return json.dumps(fields)

    @classmethod
    def from_tag(cls, text: str, max_gap_if_missing: int = DEFAULT_MAX_GAP) -> DataContract:
        """Read :meth:`tag`'s JSON; a tag written before the gap policy was recorded reads
        with ``max_gap_if_missing``, one written before open hours with none."""
        fields = json.loads(text)
        max_gap = fields.get("max_gap", max_gap_if_missing)
        return cls(tuple(fields["channels"]), fields["freq"], max_gap, fields.get("open_hours"))


def step_of(freq: str) -> pd.Timedelta:
    """The length of one step of a pandas frequency ("1h" and "h" are one)."""
    return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
