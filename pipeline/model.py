"""The forecaster network and its config; nothing else.

A stacked LSTM reads the lookback window and a linear head maps its final state to every
horizon step at once (direct multi-step). Inputs are normalized per window (instance
normalization) and per channel (a training-set scale), and the output is restored, so one
model serves series of any level.

A checkpoint holds the config beside the weights, so a model can be rebuilt from the file alone,
and it is loaded with ``weights_only=True``: no arbitrary code is unpickled.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import RollcastError

# Keeps division safe for a channel that never moved in training.
MIN_SCALE = 1e-6


# What torch.load and the rebuild raise for a file that is not a valid checkpoint.
UNREADABLE_CHECKPOINT = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    KeyError,
    IndexError,
    RuntimeError,
    TypeError,
    ValueError,
)


class CheckpointError(RollcastError):
    """A checkpoint that cannot be turned back into a model."""


@dataclass(frozen=True)
class ForecasterConfig:
    """Everything needed to rebuild the network, and what it expects of its input."""

    channels: tuple[str, ...]
    lookback: int = 96
    horizon: int = 24
    freq: str = "1h"
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    norm: str = "last"  # "last": subtract the window's last value; "mean": its mean; "none"

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def serves_like(self, other: ForecasterConfig) -> bool:
        """Whether a model of ``other`` can replace this one: same inputs, outputs and step."""
        keys = ("channels", "lookback", "horizon", "freq")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForecasterConfig:
        return cls(**{**data, "channels": tuple(data["channels"])})


class StackedLSTMForecaster(nn.Module):
    """``(B, L, C)`` recent values in, ``(B, H, C)`` forecasts out, in the data's own units."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        if config.norm not in ("last", "mean", "none"):
            raise ValueError(f"norm must be 'last', 'mean' or 'none', not {config.norm!r}")
        self.config = config
        self.lstm = nn.LSTM(
            input_size=config.n_channels,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.horizon * config.n_channels)
        # Per-channel spread of the training data; set by `fit_scale`, saved with the weights.
        self.scale: torch.Tensor
        self.register_buffer("scale", torch.ones(config.n_channels))

    def fit_scale(self, inputs: torch.Tensor) -> None:
        """Set the per-channel scale from training inputs ``(N, L, C)``."""
        spread = inputs.reshape(-1, inputs.shape[-1]).float().std(dim=0)
        self.scale.copy_(spread.clamp_min(MIN_SCALE))

    def anchor(self, x: torch.Tensor) -> torch.Tensor:
        """The per-window level removed before the LSTM and restored after: ``(B, 1, C)``."""
        if self.config.norm == "last":
            return x[:, -1:, :]
        if self.config.norm == "mean":
            return x.mean(dim=1, keepdim=True)
        return torch.zeros_like(x[:, -1:, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        level = self.anchor(x)  # (B, 1, C)
        z = (x - level) / self.scale  # (B, L, C)
        states, _ = self.lstm(z)  # (B, L, hidden)
        out = self.head(states[:, -1])  # (B, H*C)
        out = out.view(batch, self.config.horizon, self.config.n_channels)  # (B, H, C)
        return out.float() * self.scale + level


def save_checkpoint(model: StackedLSTMForecaster, path: Path) -> Path:
    """Write config and weights to one file."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state}, path)
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> StackedLSTMForecaster:
    """Rebuild a model from :func:`save_checkpoint`'s file, in eval mode."""
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        model = StackedLSTMForecaster(ForecasterConfig.from_dict(blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except UNREADABLE_CHECKPOINT as err:
        raise CheckpointError(f"cannot load forecaster checkpoint {path}: {err}") from err
    return model.to(device).eval()
