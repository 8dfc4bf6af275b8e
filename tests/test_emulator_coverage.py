"""Every MIL op type of coremltools' iOS15-iOS18 definitions runs in the emulator, and the
ops added for it (control flow, lists, state, resizing, random, recurrent, compressed
weights, ...) match an independent reference: NumPy, torch's own layers, or coremltools'
value_inference. Programs are built with coremltools' MIL Builder and run by the emulator's
runtime as they are (no conversion), so each test takes milliseconds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.coreml_import import coremltools
from pipeline.emulator import Emulator
from pipeline.emulator.ops import OPS

ct = coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import mil_list, types  # noqa: E402
from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry  # noqa: E402

RNG = np.random.default_rng(13)
iOS16, iOS17, iOS18 = ct.target.iOS16, ct.target.iOS17, ct.target.iOS18


def f32(*shape, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


def emulate(build, specs=(), feeds=None, opset=iOS18, emulator=None):
    """Build a MIL program from ``build`` and run it once; the outputs in program order."""
    if emulator is None:
        prog = mb.program(input_specs=list(specs), opset_version=opset)(build)
        emulator = Emulator(None, program=prog)
    out = emulator.run(feeds or {})
    return [out[n] for n in emulator.plan.outputs]


def close(ref, got, tol=1e-5):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


# ------------------------------------------------------------------ the registry

def test_every_op_type_of_ios15_to_ios18_is_implemented():
    wanted = {6, 7, 8, 9}  # AvailableTarget values of iOS15 .. iOS18
    registered = {name for name, versions in SSAOpRegistry.core_ops.items()
                  if any(cls is not None and int(v) in wanted for v, cls in versions.items())}
    registered = (registered - {"_const_symbolic"}) | {"coreml_update_state"}
    assert len(registered) >= 168  # coremltools 9: 167 core op types beside _const_symbolic
    missing = sorted(registered - set(OPS))
    assert not missing, missing


# ------------------------------------------------------------------ control flow

def test_while_loop_and_cond_match_a_python_loop():
    x = np.array([1.0, -0.5, 2.0], np.float32)

    def build(x):
        i, acc = mb.while_loop(_cond=lambda i, a: mb.less(x=i, y=4),
                               _body=lambda i, a: (mb.add(x=i, y=1), mb.add(x=mb.mul(x=a, y=1.5),
                                                                          y=x)),
                               loop_vars=(0, x))
        big = mb.greater(x=mb.reduce_sum(x=acc), y=10.0)
        return i, mb.cond(pred=big, _true_fn=lambda: mb.sub(x=acc, y=x),
                          _false_fn=lambda: mb.mul(x=acc, y=-1.0))

    i, y = emulate(build, [mb.TensorSpec((3,))], {"x": x})
    acc = x.copy()
    for _ in range(4):
        acc = acc * 1.5 + x
    assert int(i) == 4
    close(acc - x if acc.sum() > 10 else -acc, y)


def test_cond_takes_the_false_branch():
    def build(x):
        return mb.cond(pred=mb.less(x=mb.reduce_sum(x=x), y=0.0),
                       _true_fn=lambda: mb.exp(x=x), _false_fn=lambda: mb.square(x=x))
    x = np.array([1.0, 2.0], np.float32)
    close(x * x, emulate(build, [mb.TensorSpec((2,))], {"x": x})[0])


def test_lists_written_in_a_loop_read_gathered_and_scattered():
    x = f32(2)

    def build(x):
        ls = mb.make_list(init_length=1, elem_shape=[2], dtype="fp32")
        _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=4),
                              _body=lambda i, ls: (mb.add(x=i, y=1), mb.list_write(
                                  ls=ls, index=i, value=mb.mul(x=x, y=mb.cast(x=i, dtype="fp32")))),
                              loop_vars=(0, ls))
        ls2 = mb.list_scatter(ls=ls, indices=np.array([1, 5], np.int32), value=np.ones((2, 2), np.float32))
        return (mb.list_length(ls=ls), mb.list_read(ls=ls, index=3),
                mb.list_gather(ls=ls, indices=np.array([2, 0], np.int32)),
                mb.list_length(ls=ls2), mb.list_gather(ls=ls2, indices=np.array([0, 1, 4, 5], np.int32)))

    n, third, gathered, n2, scattered = emulate(build, [mb.TensorSpec((2,))], {"x": x})
    assert int(n) == 4 and int(n2) == 6
    close(3 * x, third)
    close(np.stack([2 * x, 0 * x]), gathered)
    close(np.stack([0 * x, np.ones(2), np.zeros(2), np.ones(2)]), scattered)


# ------------------------------------------------------------------ state

def accumulator(mode="fp32_compute"):
    @mb.program(input_specs=[mb.StateTensorSpec((1, 4), dtype=types.fp16),
                             mb.TensorSpec((1, 4), dtype=types.fp16)], opset_version=iOS18)
    def prog(acc, x):
        total = mb.add(x=mb.read_state(input=acc), y=x)
        mb.coreml_update_state(state=acc, value=total)
        return mb.mul(x=total, y=np.float16(2.0))
    return Emulator(None, mode, program=prog)


@pytest.mark.parametrize("mode", ["fp32_compute", "native_fp16"])
def test_state_persists_across_calls_and_resets(mode):
    em = accumulator(mode)
    xs = [np.full((1, 4), v, np.float16) for v in (1.0, 2.5, -0.5)]
    outs = [em.run({"x": x})[em.plan.outputs[0]] for x in xs]
    close([2 * np.cumsum([1.0, 2.5, -0.5])[i] * np.ones((1, 4)) for i in range(3)], outs)
    em.reset_state()
    close(2 * np.ones((1, 4)), em.run({"x": xs[0]})[em.plan.outputs[0]])


def test_separate_states_do_not_share_buffers():
    em = accumulator()
    a, b = em.make_state(), em.make_state()
    assert float(a["acc"].value.abs().sum()) == 0.0  # Core ML's makeState() zero-fills
    for _ in range(3):
        em.run({"x": np.ones((1, 4), np.float16)}, state=a)
    em.run({"x": np.ones((1, 4), np.float16)}, state=b)
    close(3 * np.ones((1, 4)), a["acc"].value.cpu().numpy())
    close(np.ones((1, 4)), b["acc"].value.cpu().numpy())


# ------------------------------------------------------------------ reshape across opsets

@pytest.mark.parametrize("opset,shape,expected", [
    (iOS17, [0, -1, 5], (3, 8, 5)),        # zeros count from the right from iOS17
    (iOS17, [1, 0, -1, 0], (1, 3, 8, 5)),  # 0 -> 3 and 5; -1 -> 8
    (iOS16, [0, -1, 4, 5], (2, 3, 4, 5)),  # the same position before
])
def test_reshape_zeros_follow_the_opset(opset, shape, expected):
    x = f32(2, 3, 4, 5)
    holder = {}

    def build(x):
        holder["y"] = mb.reshape(x=x, shape=np.array(shape, np.int32))
        return holder["y"]

    (got,) = emulate(build, [mb.TensorSpec(x.shape)], {"x": x}, opset=opset)
    assert tuple(holder["y"].shape) == expected  # coremltools' own type inference agrees
    close(x.reshape(expected), got)


# ------------------------------------------------------------------ tensor transformation

def _space_to_batch_np(x, b, pads):
    p = np.pad(x, [(0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])])
    n, c, h, w = p.shape
    out = np.zeros((b[0] * b[1] * n, c, h // b[0], w // b[1]), x.dtype)
    for bh in range(b[0]):
        for bw in range(b[1]):
            out[(bh * b[1] + bw) * n:(bh * b[1] + bw + 1) * n] = p[:, :, bh::b[0], bw::b[1]]
    return out


def test_space_to_batch_and_back():
    x = f32(2, 3, 4, 6)
    pads = [[1, 1], [0, 2]]

    def build(x):
        s = mb.space_to_batch(x=x, block_shape=np.array([2, 4], np.int32),
                              paddings=np.array(pads, np.int32))
        return s, mb.batch_to_space(x=s, block_shape=np.array([2, 4], np.int32),
                                    crops=np.array(pads, np.int32))

    s, back = emulate(build, [mb.TensorSpec(x.shape)], {"x": x})
    close(_space_to_batch_np(x, (2, 4), pads), s)
    close(x, back)


def test_sliding_windows_matches_numpy():
    x = f32(2, 9, 3)
    (got,) = emulate(lambda x: mb.sliding_windows(x=x, axis=1, size=4, stride=2),
                     [mb.TensorSpec(x.shape)], {"x": x})
    ref = np.lib.stride_tricks.sliding_window_view(x, 4, axis=1)[:, ::2]  # [2, 3, 3, 4]
    close(np.moveaxis(ref, -1, 2), got)


def _reverse_sequence_np(x, lengths, seq_axis, batch_axis):
    out = x.copy()
    for i, n in enumerate(lengths):
        src = np.take(x, i, axis=batch_axis)
        dst = np.take(out, i, axis=batch_axis)
        sa = seq_axis if seq_axis < batch_axis else seq_axis - 1
        idx = [slice(None)] * src.ndim
        idx[sa] = slice(0, n)
        dst[tuple(idx)] = np.flip(src[tuple(idx)], sa)
        sel = [slice(None)] * x.ndim
        sel[batch_axis] = i
        out[tuple(sel)] = dst
    return out


@pytest.mark.parametrize("shape,lengths,seq_axis,batch_axis", [
    ((3, 5, 2), [2, 5, 0], 1, 0), ((4, 3), [1, 3, 4], 0, 1)])
def test_reverse_sequence_matches_numpy(shape, lengths, seq_axis, batch_axis):
    x = f32(*shape)
    (got,) = emulate(lambda x: mb.reverse_sequence(x=x, lengths=np.array(lengths, np.int32),
                                                   seq_axis=seq_axis, batch_axis=batch_axis),
                     [mb.TensorSpec(x.shape)], {"x": x})
    close(_reverse_sequence_np(x, lengths, seq_axis, batch_axis), got)


@pytest.mark.parametrize("inputs", [
    dict(x=f32(4, 5), update=f32(2, 2), begin=np.array([1, 0], np.int32),
         end=np.array([4, 5], np.int32), stride=np.array([2, 3], np.int32)),
    dict(x=f32(3, 4), update=f32(4), begin=np.array([1, 0], np.int32),
         end=np.array([2, 4], np.int32), squeeze_mask=[True, False]),
])
def test_slice_update_matches_coremltools_value_inference(inputs):
    from tests.test_emulator_ops import mil_op

    ref, got = mil_op("slice_update", opset=iOS18, **inputs)
    assert ref is not None
    close(ref, got)


# ------------------------------------------------------------------ image resizing

def test_resize_linear_and_nearest():
    x = f32(1, 2, 3, 4)
    lin, near = emulate(lambda x: (mb.resize(x=x, shape=np.array([5, 7], np.int32), resized_dims=np.uint32(2),
                                             sampling_mode="STRICT_ALIGN_CORNERS"),
                                   mb.resize(x=x, shape=np.array([6, 8], np.int32), resized_dims=np.uint32(2),
                                             interpolation_mode="NEAREST_NEIGHBOR")),
                        [mb.TensorSpec(x.shape)], {"x": x}, opset=iOS17)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(5, 7), mode="bilinear",
                                          align_corners=True).numpy()
    close(ref, lin)
    close(x.repeat(2, 2).repeat(2, 3), near)


def test_crop_resize_whole_image_is_an_align_corners_resize():
    x = f32(2, 3, 5, 6)
    boxes = np.array([[0, 0, 4, 5], [1, 1, 3, 4]], np.float32)  # [h0, w0, h1, w1] in pixels

    def build(x):
        return mb.crop_resize(x=x, boxes=boxes, box_indices=np.array([1, 0], np.int32),
                              target_height=4, target_width=3, sampling_mode="STRICT_ALIGN_CORNERS")

    (got,) = emulate(build, [mb.TensorSpec(x.shape)], {"x": x}, opset=iOS17)
    t = torch.from_numpy(x)
    whole = torch.nn.functional.interpolate(t[1:2], size=(4, 3), mode="bilinear", align_corners=True)
    part = torch.nn.functional.interpolate(t[0:1, :, 1:4, 1:5], size=(4, 3), mode="bilinear",
                                           align_corners=True)
    close(torch.cat([whole, part]).numpy(), got)


def test_crop_resize_ios16_roi_layout():
    x = f32(2, 1, 4, 4)
    roi = np.array([[0, 0, 3, 3]], np.float32).reshape(1, 1, 4, 1, 1)
    (got,) = emulate(lambda x: mb.crop_resize(x=x, roi=roi, target_height=4, target_width=4,
                                              sampling_mode="ALIGN_CORNERS"),
                     [mb.TensorSpec(x.shape)], {"x": x}, opset=iOS16)
    close(x[None], got)  # [N=1, B=2, C, h, w]: the whole image, unchanged


def test_resample_at_pixel_centres_picks_pixels():
    x = f32(1, 2, 3, 4)
    ys, xs = RNG.integers(0, 3, (5, 6)), RNG.integers(0, 4, (5, 6))
    coords = np.stack([xs, ys], -1)[None].astype(np.float32)  # (x, y) pairs

    def build(x):
        return mb.resample(x=x, coordinates=coords, sampling_mode="bilinear", padding_mode="constant",
                           padding_value=0.0, coordinates_mode="unnormalized", align_corners=True)

    (got,) = emulate(build, [mb.TensorSpec(x.shape)], {"x": x}, opset=iOS17)
    close(x[0][:, ys, xs][None], got)


def test_affine_mirror_flips_the_image():
    x = f32(1, 2, 3, 4)

    def build(x):
        return mb.affine(x=x, transform_matrix=np.array([[-1, 0, 0, 0, 1, 0]], np.float32),
                         output_height=3, output_width=4, sampling_mode="bilinear",
                         padding_mode="constant", padding_value=0.0,
                         coordinates_mode="normalized_minus_one_to_one", align_corners=True)

    (got,) = emulate(build, [mb.TensorSpec(x.shape)], {"x": x}, opset=iOS17)
    close(x[..., ::-1], got)


# ------------------------------------------------------------------ random

def test_random_ops_follow_their_distributions():
    n = 20000

    def build():
        shape = np.array([n], np.int32)
        return (mb.random_uniform(shape=shape, low=-1.0, high=3.0),
                mb.random_normal(shape=shape, mean=2.0, stddev=0.5),
                mb.random_bernoulli(shape=shape, prob=0.3),
                mb.random_categorical(x=np.log(np.array([[0.2, 0.5, 0.3]], np.float32)), size=n))

    u, g, b, c = emulate(build, opset=iOS17)
    assert u.min() >= -1.0 and u.max() < 3.0 and abs(u.mean() - 1.0) < 0.05
    assert abs(g.mean() - 2.0) < 0.02 and abs(g.std() - 0.5) < 0.02
    assert set(np.unique(b)) == {0.0, 1.0} and abs(b.mean() - 0.3) < 0.02
    assert c.shape == (1, n)
    close([0.2, 0.5, 0.3], np.bincount(c[0].astype(int), minlength=3) / n, tol=0.02)


def test_random_seed_repeats_the_draw():
    def build():
        return (mb.random_normal(shape=np.array([8], np.int32), seed=7),
                mb.random_normal(shape=np.array([8], np.int32)))
    prog = mb.program(input_specs=[], opset_version=iOS17)(build)
    em = Emulator(None, program=prog)
    (s1, f1), (s2, f2) = emulate(None, emulator=em), emulate(None, emulator=em)
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(f1, f2)


# ------------------------------------------------------------------ recurrent (vs torch.nn)

S, B, I, H = 5, 2, 3, 4


def _torch_weights(module, gates_torch, order):
    """torch stacks gates as ``gates_torch``; MIL wants them in ``order``."""
    w = {k: v.detach().numpy() for k, v in module.state_dict().items()}

    def reorder(a):
        parts = dict(zip(gates_torch, np.split(a, len(gates_torch))))
        return np.concatenate([parts[g] for g in order])
    return w, reorder


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_lstm_matches_torch(direction):
    torch.manual_seed(0)
    m = torch.nn.LSTM(I, H)
    w, reorder = _torch_weights(m, "ifzo", "ifoz")
    x, h0, c0 = f32(S, B, I), f32(B, H), f32(B, H)

    def build(x, h0, c0):
        return mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=reorder(w["weight_ih_l0"]),
                       weight_hh=reorder(w["weight_hh_l0"]),
                       bias=reorder(w["bias_ih_l0"] + w["bias_hh_l0"]), direction=direction,
                       output_sequence=True)

    seq, h, c = emulate(build, [mb.TensorSpec(x.shape), mb.TensorSpec(h0.shape), mb.TensorSpec(c0.shape)],
                        {"x": x, "h0": h0, "c0": c0}, opset=iOS17)
    xt = torch.from_numpy(x.copy() if direction == "forward" else x[::-1].copy())
    ref, (hn, cn) = m(xt, (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None]))
    close(ref.detach().numpy(), seq)
    close(hn[0].detach().numpy(), h)
    close(cn[0].detach().numpy(), c)


def test_bidirectional_lstm_matches_torch():
    torch.manual_seed(1)
    m = torch.nn.LSTM(I, H, bidirectional=True)
    w, reorder = _torch_weights(m, "ifzo", "ifoz")
    x, h0, c0 = f32(S, B, I), f32(B, 2 * H), f32(B, 2 * H)

    def build(x, h0, c0):
        return mb.lstm(x=x, initial_h=h0, initial_c=c0, direction="bidirectional", output_sequence=True,
                       weight_ih=reorder(w["weight_ih_l0"]), weight_hh=reorder(w["weight_hh_l0"]),
                       bias=reorder(w["bias_ih_l0"] + w["bias_hh_l0"]),
                       weight_ih_back=reorder(w["weight_ih_l0_reverse"]),
                       weight_hh_back=reorder(w["weight_hh_l0_reverse"]),
                       bias_back=reorder(w["bias_ih_l0_reverse"] + w["bias_hh_l0_reverse"]))

    seq, h, c = emulate(build, [mb.TensorSpec(x.shape), mb.TensorSpec(h0.shape), mb.TensorSpec(c0.shape)],
                        {"x": x, "h0": h0, "c0": c0}, opset=iOS17)
    split = lambda a: torch.from_numpy(np.stack([a[:, :H], a[:, H:]]))  # noqa: E731
    ref, (hn, cn) = m(torch.from_numpy(x), (split(h0), split(c0)))
    close(ref.detach().numpy(), seq)
    close(np.concatenate([hn[0].detach().numpy(), hn[1].detach().numpy()], -1), h)
    close(np.concatenate([cn[0].detach().numpy(), cn[1].detach().numpy()], -1), c)


def test_gru_reset_after_matches_torch():
    torch.manual_seed(2)
    m = torch.nn.GRU(I, H)
    w, reorder = _torch_weights(m, "rzn", "rnz")
    x, h0 = f32(S, B, I), f32(B, H)

    def build(x, h0):
        return mb.gru(x=x, initial_h=h0, weight_ih=reorder(w["weight_ih_l0"]),
                      weight_hh=reorder(w["weight_hh_l0"]), input_bias=reorder(w["bias_ih_l0"]),
                      bias=reorder(w["bias_hh_l0"]), reset_after=True, output_sequence=True)

    seq, h = emulate(build, [mb.TensorSpec(x.shape), mb.TensorSpec(h0.shape)], {"x": x, "h0": h0})
    ref, hn = m(torch.from_numpy(x), torch.from_numpy(h0)[None])
    close(ref.detach().numpy(), seq)
    close(hn[0].detach().numpy(), h)


def test_gru_default_resets_before_the_matmul():
    """iOS15 gru: o = tanh(W_o x + R_o (r * h) + b_o), as coremltools' op test computes it."""
    wi, wh, b = f32(3 * H, I), f32(3 * H, H), f32(3 * H)
    x, h0 = f32(S, B, I), f32(B, H)

    def build(x, h0):
        return mb.gru(x=x, initial_h=h0, weight_ih=wi, weight_hh=wh, bias=b, output_sequence=False)

    last, h = emulate(build, [mb.TensorSpec(x.shape), mb.TensorSpec(h0.shape)], {"x": x, "h0": h0}, opset=iOS17)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    (wr, wo, wz), (rr, ro, rz), (br, bo, bz) = np.split(wi, 3), np.split(wh, 3), np.split(b, 3)
    hh = h0.astype(np.float64)
    for xt in x:
        r = sig(xt @ wr.T + hh @ rr.T + br)
        z = sig(xt @ wz.T + hh @ rz.T + bz)
        o = np.tanh(xt @ wo.T + (r * hh) @ ro.T + bo)
        hh = (1 - z) * o + z * hh
    close(hh[None], last)
    close(hh, h)


def test_rnn_reverse_matches_torch():
    torch.manual_seed(3)
    m = torch.nn.RNN(I, H)
    w = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    x, h0 = f32(S, B, I), f32(B, H)

    def build(x, h0):
        return mb.rnn(x=x, initial_h=h0, weight_ih=w["weight_ih_l0"], weight_hh=w["weight_hh_l0"],
                      bias=w["bias_ih_l0"] + w["bias_hh_l0"], direction="reverse", output_sequence=True)

    seq, h = emulate(build, [mb.TensorSpec(x.shape), mb.TensorSpec(h0.shape)], {"x": x, "h0": h0}, opset=iOS17)
    ref, hn = m(torch.from_numpy(x[::-1].copy()), torch.from_numpy(h0)[None])
    close(ref.detach().numpy(), seq)
    close(hn[0].detach().numpy(), h)


# ------------------------------------------------------------------ classify, conv_quantized, nms

def test_classify_returns_the_top_label_and_the_probabilities():
    p = np.array([0.1, 0.6, 0.3], np.float32)

    def build(p):
        return mb.classify(probabilities=p, classes=mb.const(val=mil_list(["cat", "dog", "owl"])))

    label, probs = emulate(build, [mb.TensorSpec((3,))], {"p": p})
    assert label == "dog"
    close(p, [probs[k] for k in ("cat", "dog", "owl")])


def test_conv_quantized_linear_dequantizes_then_convolves():
    x = f32(1, 2, 5, 5)
    wq = RNG.integers(0, 255, (3, 2, 3, 3)).astype(np.uint8)
    scale, bias = np.float32(0.02), np.float32(-1.5)

    def build(x):
        return mb.conv_quantized(x=x, weight=wq, quantization_type="linear", nbits=8,
                                 quant_scale=scale, quant_bias=bias)

    (got,) = emulate(build, [mb.TensorSpec(x.shape)], {"x": x}, opset=ct.target.iOS15)
    w = wq.astype(np.float32) * scale + bias
    close(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy(), got, 1e-4)


def test_non_maximum_suppression_keeps_the_best_of_overlapping_boxes():
    # (cx, cy, w, h): boxes 0 and 1 overlap (IoU 0.68), box 2 is apart, box 3 scores too low
    boxes = np.array([[[0, 0, 2, 2], [0.2, 0, 2, 2], [5, 5, 1, 1], [9, 9, 1, 1]]], np.float32)
    scores = np.array([[[0.6, 0.1], [0.2, 0.9], [0.3, 0.4], [0.01, 0.02]]], np.float32)

    def build(b, s):
        return mb.non_maximum_suppression(boxes=b, scores=s, iou_threshold=0.5, score_threshold=0.1,
                                          max_boxes=3)

    out_b, out_s, ids, n = emulate(build, [mb.TensorSpec(boxes.shape), mb.TensorSpec(scores.shape)],
                                   {"b": boxes, "s": scores}, opset=ct.target.iOS15)
    np.testing.assert_array_equal(ids, [[1, 2, -1]])  # 1 (0.9) suppresses 0 (0.6)
    assert int(n[0]) == 2
    close(np.concatenate([boxes[0, [1, 2]], np.zeros((1, 4))])[None], out_b)
    close(np.concatenate([scores[0, [1, 2]], np.zeros((1, 2))])[None], out_s)


# ------------------------------------------------------------------ constexpr (compressed weights)

def _constexpr_cases():
    q = RNG.integers(0, 255, (4, 6)).astype(np.uint8)
    lut16 = f32(16)
    idx4 = RNG.integers(0, 16, 24).astype(np.uint8)
    packed4 = (idx4[0::2] | (idx4[1::2] << 4)).astype(np.uint8)
    mask = RNG.integers(0, 2, (4, 6)).astype(np.uint8)
    packed_mask = np.packbits(mask.reshape(-1), bitorder="little")
    lut18 = f32(2, 1, 4, 1)  # a 4-entry table per half of the rows
    lut_vec = f32(1, 1, 4, 2)  # 2-vectors along axis 1
    idx18 = RNG.integers(0, 4, (4, 6)).astype(types.np_uint2_dtype)
    mask1 = mask.astype(types.np_uint1_dtype)
    return [
        (iOS16, "constexpr_affine_dequantize",
         dict(quantized_data=q, zero_point=np.uint8(128), scale=np.float32(0.1), axis=0)),
        (iOS16, "constexpr_affine_dequantize",
         dict(quantized_data=q, zero_point=RNG.integers(0, 255, 6).astype(np.uint8),
              scale=f32(6, lo=0.01, hi=0.1), axis=1)),
        (iOS16, "constexpr_cast", dict(source_val=f32(3, 2).astype(np.float16), output_dtype="fp32")),
        (iOS16, "constexpr_lut_to_dense", dict(indices=packed4, lut=lut16, shape=np.array([4, 6], np.uint32))),
        (iOS16, "constexpr_sparse_to_dense",
         dict(nonzero_data=f32(int(mask.sum())), mask=packed_mask, shape=np.array([4, 6], np.uint32))),
        (iOS18, "constexpr_blockwise_shift_scale",
         dict(data=RNG.integers(-8, 8, (4, 6)).astype(np.int8), scale=f32(2, 3, lo=0.1, hi=1),
              offset=RNG.integers(-2, 2, (2, 3)).astype(np.int8))),
        (iOS18, "constexpr_lut_to_dense", dict(indices=idx18, lut=lut18)),
        (iOS18, "constexpr_lut_to_dense",
         dict(indices=RNG.integers(0, 4, (4, 3)).astype(types.np_uint2_dtype), lut=lut_vec,
              vector_axis=1)),
        (iOS18, "constexpr_sparse_to_dense", dict(nonzero_data=f32(int(mask.sum())), mask=mask1)),
        (iOS18, "constexpr_lut_to_sparse",
         dict(indices_mask=mask1,
              indices_nonzero_data=RNG.integers(0, 4, int(mask.sum())).astype(types.np_uint2_dtype),
              lut=lut18)),
        (iOS18, "constexpr_sparse_blockwise_shift_scale",
         dict(data_mask=mask1, nonzero_data=RNG.integers(-8, 8, int(mask.sum())).astype(np.int8),
              scale=f32(2, 3, lo=0.1, hi=1))),
    ]


CONSTEXPR = _constexpr_cases()


@pytest.mark.parametrize("opset,op_name,inputs", CONSTEXPR,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CONSTEXPR)])
def test_constexpr_ops_match_coremltools_decompression(opset, op_name, inputs):
    holder = {}

    def build(x):
        holder["out"] = getattr(mb, op_name)(**inputs)
        outs = tuple(holder["out"]) if isinstance(holder["out"], (tuple, list)) else (holder["out"],)
        if len(outs) == 2:  # sparse: (mask, values) -> dense, as a program would use them
            return mb.add(x=mb.constexpr_sparse_to_dense(nonzero_data=outs[1], mask=outs[0]), y=0.0)
        return mb.add(x=mb.cast(x=outs[0], dtype="fp32"), y=0.0)

    prog = mb.program(input_specs=[mb.TensorSpec((1,))], opset_version=opset)(build)
    outs = tuple(holder["out"]) if isinstance(holder["out"], (tuple, list)) else (holder["out"],)
    op = outs[0].op
    ref = op.materialized_val_inference()
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = OPS[op_name](**{k: v.val for k, v in op.inputs.items()})
    got = got if isinstance(got, tuple) else (got,)
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(np.asarray(r), np.asarray(g))
    (emulated,) = emulate(None, feeds={"x": np.zeros(1, np.float32)},
                          emulator=Emulator(None, program=prog))  # folded in the plan
    dense = ref[0] if len(ref) == 1 else np.zeros(ref[0].shape, np.float32)
    if len(ref) == 2:
        dense[ref[0] != 0] = ref[1]
    close(np.asarray(dense, np.float32), emulated)


@pytest.mark.parametrize("target", [iOS16, iOS18], ids=["iOS16", "iOS18"])
@pytest.mark.parametrize("method", ["palettize", "quantize", "prune"])
def test_packages_compressed_by_coremltools_optimize_emulate(tmp_path, target, method):
    """A saved package whose weight coremltools.optimize compressed: the emulator's own
    decompression gives the output of coremltools' decompression of the same op."""
    import coremltools.optimize.coreml as cto

    w = RNG.standard_normal((16, 8)).astype(np.float32)
    prog = mb.program(input_specs=[mb.TensorSpec((2, 8))], opset_version=target)(
        lambda x: mb.linear(x=x, weight=w))
    ml = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                    compute_precision=ct.precision.FLOAT32)
    config, compress = {
        "palettize": (cto.OpPalettizerConfig(nbits=2, mode="kmeans", weight_threshold=1),
                      cto.palettize_weights),
        "quantize": (cto.OpLinearQuantizerConfig(weight_threshold=1), cto.linear_quantize_weights),
        "prune": (cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=1),
                  cto.prune_weights)}[method]
    compress(ml, cto.OptimizationConfig(global_config=config)).save(str(tmp_path / "c.mlpackage"))
    em = Emulator(tmp_path / "c.mlpackage")
    (op,) = [o for o in em.program.functions["main"].operations if o.op_type.startswith("constexpr_")]
    ref_w = np.asarray(op.materialized_val_inference(), np.float32)
    assert np.abs(ref_w - w).max() > 1e-3  # really compressed: the weight changed
    x = f32(2, 8)
    close(x @ ref_w.T, emulate(None, feeds={"x": x}, emulator=em)[0], tol=1e-5)
