"""The data contract: what one store, one registered model and every version of it agree on.

A contract is the channels a model reads and forecasts (in order), the step between
observations, and the gap policy (how many missing steps are interpolated before a series is
split). The training data carries the contract it was prepared under, the model config carries
it (its ``channels``, ``freq`` and ``max_gap``), and the registered model records it as a tag,
so a version of another contract never replaces the champion. The defaults are written here
and nowhere else.

>>> contract = DataContract(("load", "temp"), "1h")
>>> contract.max_gap, DataContract.from_tag(contract.tag()) == contract
(3, True)
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

    def describe(self) -> str:
        return (
            f"channels {list(self.channels)[:8]} every {self.freq}, gaps over {self.max_gap} split"
        )

    def differences(self, other: DataContract) -> list[str]:
        """What ``other`` changes, e.g. ``["max_gap 3 -> 6"]``; "1h" and "h" are one step."""
        changed = [
            f"{name} {getattr(self, name)!r} -> {getattr(other, name)!r}"
            for name in ("channels", "max_gap")
            if getattr(self, name) != getattr(other, name)
        ]
        if step_of(self.freq) != step_of(other.freq):
            changed.append(f"freq {self.freq!r} -> {other.freq!r}")
        return changed

    def tag(self) -> str:
        """The contract as the registered model's tag records it (JSON)."""
        return json.dumps(
            {"channels": list(self.channels), "freq": self.freq, "max_gap": self.max_gap}
        )

    @classmethod
    def from_tag(cls, text: str, max_gap_if_missing: int = DEFAULT_MAX_GAP) -> DataContract:
        """Read :meth:`tag`'s JSON; a tag written before the gap policy was recorded reads
        with ``max_gap_if_missing``."""
        fields = json.loads(text)
        max_gap = fields.get("max_gap", max_gap_if_missing)
        return cls(tuple(fields["channels"]), fields["freq"], max_gap)


def step_of(freq: str) -> pd.Timedelta:
    """The length of one step of a pandas frequency ("1h" and "h" are one)."""
    return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
