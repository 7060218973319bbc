"""Recurrent cells torch does not ship, each with the interface of ``torch.nn.LSTM``.

:class:`PeepholeLSTM` is the LSTM with peephole connections (Gers & Schmidhuber 2000,
"Recurrent nets that time and count"): the input and forget gates also read the previous cell
state ``c_{t-1}``, and the output gate the new one ``c_t``, each through a diagonal weight::

    i_t = sigmoid(W_ii x_t + W_hi h_{t-1} + w_ci * c_{t-1} + b_i)
    f_t = sigmoid(W_if x_t + W_hf h_{t-1} + w_cf * c_{t-1} + b_f)
    g_t = tanh(W_ig x_t + W_hg h_{t-1} + b_g)
    c_t = f_t * c_{t-1} + i_t * g_t
    o_t = sigmoid(W_io x_t + W_ho h_{t-1} + w_co * c_t + b_o)
    h_t = o_t * tanh(c_t)

Its weights are named, shaped and ordered (gates i, f, g, o) as ``nn.LSTM``'s, plus one
``weight_ch_l{k}[_reverse]`` of shape ``(3, H)`` per layer and direction: the peephole weights
``w_ci``, ``w_cf``, ``w_co``. An ``nn.LSTM``'s state dict therefore loads into it with
``strict=False``, and with zero peepholes the two compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PeepholeLSTM(nn.Module):
    """A multi-layer peephole LSTM over batch-first sequences, called as ``torch.nn.LSTM``.

    Parameters
    ----------
    input_size : int
        Features per time step of the input.
    hidden_size : int
        Features of the hidden and cell state, ``H``.
    num_layers : int
        Stacked layers; each layer after the first reads the outputs of the one before.
    batch_first : bool
        Must be True: inputs are ``(N, T, input_size)``. False raises ``ValueError``.
    dropout : float
        Dropout on the outputs of every layer but the last, in training only, in ``[0, 1)``.
    bidirectional : bool
        Also run each layer backwards in time; outputs then hold ``2 * H`` features, forward
        direction first, and each layer's states are ordered forward, backward.

    Notes
    -----
    A forward pass costs one input projection per layer and direction, a single matmul over
    all ``T`` steps, then ``T`` steps of an ``(N, H) x (H, 4H)`` matmul and elementwise gates:
    it grows as ``T * N * H**2`` per layer and direction, with a Python step per time step,
    so it suits short sequences (a segment-wise encoder runs a few dozen steps).

    Examples
    --------
    >>> rnn = PeepholeLSTM(3, 8, num_layers=2, bidirectional=True)
    >>> outputs, (h_n, c_n) = rnn(torch.zeros(5, 7, 3))
    >>> tuple(outputs.shape), tuple(h_n.shape), tuple(c_n.shape)
    ((5, 7, 16), (4, 5, 8), (4, 5, 8))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        _check_options(input_size, hidden_size, num_layers, batch_first, dropout)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout, self.bidirectional = batch_first, dropout, bidirectional
        self.directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * self.directions
            for suffix in self._suffixes(layer):
                self._add_weights(suffix, width)
        self.reset_parameters()

    def _suffixes(self, layer: int) -> list[str]:
        """The parameter-name suffixes of one layer's directions, as ``nn.LSTM`` names them."""
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.directions]

    def _add_weights(self, suffix: str, width: int) -> None:
        gates = 4 * self.hidden_size  # i, f, g, o stacked, as nn.LSTM
        shapes = {
            "weight_ih": (gates, width),
            "weight_hh": (gates, self.hidden_size),
            "bias_ih": (gates,),
            "bias_hh": (gates,),
            "weight_ch": (3, self.hidden_size),  # peepholes of i, f, o
        }
        for name, shape in shapes.items():
            self.register_parameter(name + suffix, nn.Parameter(torch.empty(shape)))

    def reset_parameters(self) -> None:
        """Every weight uniform in ``±1/sqrt(H)``, as ``nn.LSTM`` initializes its own."""
        bound = 1 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Outputs ``(N, T, H * dirs)`` of the last layer and the final ``(h_n, c_n)``, each
        ``(layers * dirs, N, H)``, from ``x`` ``(N, T, input_size)`` and an optional initial
        ``state`` shaped as the final one (zeros when None). Raises ``ValueError`` on other
        shapes."""
        h_0, c_0 = self._initial_state(x, state)  # each (layers*dirs, N, H)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                k = layer * self.directions + direction
                out, (h, c) = self._run(x, (h_0[k], c_0[k]), suffix, reverse=direction == 1)
                outputs.append(out)  # (N, T, H)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, dim=-1)  # (N, T, H*dirs)
            if layer < self.num_layers - 1 and self.dropout:
                x = F.dropout(x, self.dropout, self.training)
        return x, (torch.stack(h_n), torch.stack(c_n))

    def _initial_state(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"expected input (N, T, {self.input_size}), got {tuple(x.shape)}: "
                "PeepholeLSTM takes batched, batch-first sequences"
            )
        shape = (self.num_layers * self.directions, x.shape[0], self.hidden_size)
        if state is None:
            zeros = x.new_zeros(shape)
            return zeros, zeros
        h_0, c_0 = state
        if tuple(h_0.shape) != shape or tuple(c_0.shape) != shape:
            raise ValueError(
                f"expected an initial (h, c) each of shape {shape}, "
                f"got {tuple(h_0.shape)} and {tuple(c_0.shape)}"
            )
        return h_0, c_0

    def _run(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], suffix: str, reverse: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One layer in one direction: the input projection of every step at once, then the
        recurrence step by step."""
        weight_ih, weight_hh, bias_ih, bias_hh, weight_ch = (
            getattr(self, name + suffix)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch")
        )
        projected = F.linear(x, weight_ih, bias_ih + bias_hh)  # (N, T, 4H)
        return recur(projected, state, weight_hh, weight_ch, reverse)


def recur(
    projected: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor],
    weight_hh: torch.Tensor,
    weight_ch: torch.Tensor,
    reverse: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The peephole recurrence over ``projected`` ``(N, T, 4H)``, the input's share of every
    step's gates (bias included), from ``state`` ``(h, c)`` each ``(N, H)``; backwards in time
    when ``reverse``. Returns the outputs ``(N, T, H)``, in time order, and the final ``(h, c)``.
    """
    h, c = state
    recurrent = weight_hh.t()  # (H, 4H)
    peep_i, peep_f, peep_o = weight_ch.unbind(dim=0)  # each (H,)
    # One unbind, not an index per step: each index's backward would fill a zero (N, T, 4H).
    steps = projected.unbind(dim=1)  # T of (N, 4H)
    outputs = []
    for step in reversed(steps) if reverse else steps:
        gates = torch.addmm(step, h, recurrent)  # (N, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # each (N, H)
        i = torch.sigmoid(i + peep_i * c)
        f = torch.sigmoid(f + peep_f * c)
        c = f * c + i * torch.tanh(g)
        h = torch.sigmoid(o + peep_o * c) * torch.tanh(c)
        outputs.append(h)
    if reverse:
        outputs.reverse()
    return torch.stack(outputs, dim=1), (h, c)


def _check_options(
    input_size: int, hidden_size: int, num_layers: int, batch_first: bool, dropout: float
) -> None:
    """ValueError for options :class:`PeepholeLSTM` cannot take, saying which."""
    if min(input_size, hidden_size, num_layers) < 1:
        raise ValueError(
            f"input_size, hidden_size and num_layers must be at least 1, "
            f"got {input_size}, {hidden_size} and {num_layers}"
        )
    if not batch_first:
        raise ValueError("PeepholeLSTM takes batch-first input (N, T, C): pass batch_first=True")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
