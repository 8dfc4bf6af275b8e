"""Recurrent layers, as coremltools/converters/mil/mil/ops/defs/ defines them:
iOS15/recurrent.py, iOS17/recurrent.py, iOS18/recurrent.py (gru's reset_after, input_bias).

x is [seq, batch, input]; weights are stacked by gate ([i, f, o, z] for lstm, [r, o, z] for
gru); ``bias`` is the sum of the input and hidden biases. ``direction="reverse"`` runs over
the reversed sequence and returns the steps in the order it ran them (coremltools' op tests,
ops/tests/iOS14/test_recurrent.py)."""
from __future__ import annotations

import torch

from pipeline.emulator.ops.base import op, py, scalar

_ACT = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda v: v,
    "hard_sigmoid": lambda v: torch.clamp(0.2 * v + 0.5, 0.0, 1.0),
    "scaled_tanh": torch.tanh,
}


def _act(name, default: str):
    return _ACT[(py(name) or default).lower()]


def _steps(x, direction: str):
    return torch.flip(x, [0]) if direction == "reverse" else x


def _zeros(n: int, like):
    return torch.zeros(n, dtype=like.dtype, device=like.device)


def _finish(outs, h, output_sequence):
    seq = torch.stack(outs) if py(output_sequence) else outs[-1].unsqueeze(0)
    return seq, h


@op()
def rnn(x, initial_h, weight_ih, weight_hh, bias=None, direction=None, output_sequence=None,
        activation=None):
    """h_t = activation(W_ih x_t + W_hh h_{t-1} + bias)."""
    act = _act(activation, "tanh")
    b = bias if bias is not None else _zeros(weight_hh.shape[0], x)
    h, outs = initial_h, []
    for xt in _steps(x, py(direction) or "forward"):
        h = act(xt @ weight_ih.T + h @ weight_hh.T + b)
        outs.append(h)
    return _finish(outs, h, output_sequence)


@op()
def gru(x, initial_h, weight_ih, weight_hh, bias=None, direction=None, output_sequence=None,
        recurrent_activation=None, activation=None, reset_after=None, input_bias=None):
    """r, z = ra(W_i x + W_h h + b); o = act(W_io x + W_ho (r * h) + b_o), or with
    reset_after (iOS18) act(W_io x + ib_o + r * (W_ho h + b_o)); h = (1 - z) o + z h."""
    ra, act = _act(recurrent_activation, "sigmoid"), _act(activation, "tanh")
    n = weight_hh.shape[1]
    b = bias if bias is not None else _zeros(3 * n, x)
    ib = input_bias if input_bias is not None else _zeros(3 * n, x)
    w_ir, w_io, w_iz = weight_ih.split(n)
    w_hr, w_ho, w_hz = weight_hh.split(n)
    (b_r, b_o, b_z), (ib_r, ib_o, ib_z) = b.split(n), ib.split(n)
    after = bool(py(reset_after))
    h, outs = initial_h, []
    for xt in _steps(x, py(direction) or "forward"):
        r = ra(xt @ w_ir.T + ib_r + h @ w_hr.T + b_r)
        z = ra(xt @ w_iz.T + ib_z + h @ w_hz.T + b_z)
        if after:
            o = act(xt @ w_io.T + ib_o + r * (h @ w_ho.T + b_o))
        else:
            o = act(xt @ w_io.T + ib_o + (r * h) @ w_ho.T + b_o)
        h = (1 - z) * o + z * h
        outs.append(h)
    return _finish(outs, h, output_sequence)


def _lstm_dir(x, h, c, w_ih, w_hh, b, peep, ra, ca, act, clip):
    n = w_hh.shape[1]
    b = b if b is not None else _zeros(4 * n, x)
    p_i, p_f, p_o = (peep if peep is not None else _zeros(3 * n, x)).split(n)
    hs = []
    for xt in x:
        gi, gf, go, gz = (xt @ w_ih.T + h @ w_hh.T + b).split(n, dim=-1)
        i = ra(gi + p_i * c)
        f = ra(gf + p_f * c)
        z = ca(gz)
        if clip is not None:
            z = z.clamp(-clip, clip)
        c = f * c + i * z
        o = ra(go + p_o * c)
        h = o * act(c)
        hs.append(h)
    return hs, h, c


@op()
def lstm(x, initial_h, initial_c, weight_ih, weight_hh, bias=None, peephole=None,
         weight_ih_back=None, weight_hh_back=None, bias_back=None, peephole_back=None,
         direction=None, output_sequence=None, recurrent_activation=None, cell_activation=None,
         activation=None, clip=None):
    """i, f, o = ra(W_i x + W_h h + b (+ peephole * c)); z = ca(...) (clipped to +-clip);
    c = f c + i z; h = o act(c). Bidirectional: the backward pass's outputs are realigned
    with the input steps and concatenated after the forward ones."""
    fns = (_act(recurrent_activation, "sigmoid"), _act(cell_activation, "tanh"),
           _act(activation, "tanh"), None if clip is None else scalar(clip, 0.0))
    d = py(direction) or "forward"
    if d != "bidirectional":
        hs, h, c = _lstm_dir(_steps(x, d), initial_h, initial_c, weight_ih, weight_hh, bias,
                             peephole, *fns)
        seq = torch.stack(hs) if py(output_sequence) else hs[-1].unsqueeze(0)
        return seq, h, c
    n = weight_hh.shape[1]
    hs_f, h_f, c_f = _lstm_dir(x, initial_h[:, :n], initial_c[:, :n], weight_ih, weight_hh,
                               bias, peephole, *fns)
    hs_b, h_b, c_b = _lstm_dir(torch.flip(x, [0]), initial_h[:, n:], initial_c[:, n:],
                               weight_ih_back, weight_hh_back, bias_back, peephole_back, *fns)
    seq = torch.cat([torch.stack(hs_f), torch.stack(hs_b[::-1])], dim=-1)
    if not py(output_sequence):
        seq = seq[-1:]
    return seq, torch.cat([h_f, h_b], -1), torch.cat([c_f, c_b], -1)
