"""Each emulator op against a reference: coremltools' own NumPy `value_inference` where the
op defines one, torch or NumPy otherwise. Inputs are random, shapes small."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.coreml_import import coremltools
import copy

from pipeline.emulator.ops import OPS, kernel
from pipeline.emulator.runtime import _const_value, dtype_str, to_dtype

ct = coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402

RNG = np.random.default_rng(0)


def f32(*shape, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


def mil_op(op_name: str, opset=ct.target.iOS17, **inputs):
    """Build one MIL op on const inputs; return (coremltools' value, emulator's value)."""
    holder = {}
    inputs = copy.deepcopy(inputs)  # some value_inference functions write into their inputs

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=opset)
    def prog(dummy):
        holder["out"] = getattr(mb, op_name)(**inputs)
        return dummy

    out = holder["out"]
    first = out[0] if isinstance(out, (tuple, list)) else out
    op = first.op
    kwargs = {}
    for name, var in op.inputs.items():
        if isinstance(var, (list, tuple)):
            kwargs[name] = [_const_value(v.val, dtype_str(v), torch.device("cpu"), "fp32_compute")
                            for v in var]
        else:
            kwargs[name] = _const_value(var.val, dtype_str(var), torch.device("cpu"), "fp32_compute")
    got = kernel(op.op_type, int(opset))(**kwargs)
    if isinstance(out, (tuple, list)):
        return [o.val for o in out], [to_dtype(g, dtype_str(o)).numpy() for g, o in zip(got, out)]
    return first.val, to_dtype(got, dtype_str(first)).numpy()


def close(ref, got, rtol=1e-5, atol=1e-5):
    ref, got = np.asarray(ref), np.asarray(got)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    if ref.dtype == bool or got.dtype == bool:
        np.testing.assert_array_equal(ref.astype(bool), got.astype(bool))
    else:
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=atol)


X = f32(2, 3, 4)
Y = f32(2, 3, 4)
XY = np.where(RNG.random((2, 3, 4)) < 0.5, X, Y)  # equal to X at about half the positions
POS = f32(2, 3, 4, lo=0.1, hi=3.0)
IDX = np.array([[[0, 2, 1, 0]], [[2, 2, 0, 1]]], np.int32)  # [2, 1, 4] indices into axis 1

VALUE_INFERENCE_CASES = [
    ("add", dict(x=X, y=Y)), ("sub", dict(x=X, y=Y)), ("mul", dict(x=X, y=Y)),
    ("real_div", dict(x=X, y=POS)), ("floor_div", dict(x=X, y=POS)), ("mod", dict(x=X, y=POS)),
    ("pow", dict(x=POS, y=f32(2, 3, 4, lo=-2, hi=2))), ("maximum", dict(x=X, y=Y)),
    ("minimum", dict(x=X, y=Y)), ("equal", dict(x=X, y=XY)), ("not_equal", dict(x=X, y=XY)),
    ("less", dict(x=X, y=Y)), ("less_equal", dict(x=X, y=Y)), ("greater", dict(x=X, y=Y)),
    ("greater_equal", dict(x=X, y=Y)),
    ("logical_and", dict(x=X > 0, y=Y > 0)), ("logical_or", dict(x=X > 0, y=Y > 0)),
    ("logical_xor", dict(x=X > 0, y=Y > 0)), ("logical_not", dict(x=X > 0)),
    ("abs", dict(x=X)), ("ceil", dict(x=X)), ("floor", dict(x=X)), ("round", dict(x=X)),
    ("sign", dict(x=X)), ("sqrt", dict(x=POS)), ("exp", dict(x=X)), ("exp2", dict(x=X)),
    ("log", dict(x=POS)), ("log", dict(x=np.zeros((3,), np.float32))),
    ("rsqrt", dict(x=POS)), ("rsqrt", dict(x=POS, epsilon=0.5)), ("inverse", dict(x=POS)),
    ("square", dict(x=X)), ("sin", dict(x=X)), ("cos", dict(x=X)), ("tan", dict(x=X * 0.5)),
    ("tanh", dict(x=X)), ("erf", dict(x=X)), ("atan", dict(x=X)), ("sinh", dict(x=X)),
    ("cosh", dict(x=X)), ("asin", dict(x=X * 0.4)), ("acos", dict(x=X * 0.4)),
    ("atanh", dict(x=X * 0.4)), ("clip", dict(x=X, alpha=-0.5, beta=0.7)),
    ("threshold", dict(x=X, alpha=0.3)), ("cast", dict(x=X, dtype="int32")),
    ("relu", dict(x=X)), ("relu6", dict(x=X * 5)), ("sigmoid", dict(x=X)),
("softplus", dict(x=X)), ("softsign", dict(x=X)),
    ("elu", dict(x=X, alpha=0.7)), ("leaky_relu", dict(x=X, alpha=0.2)),
    ("clamped_relu", dict(x=X, alpha=0.3, beta=1.0)),
    ("linear_activation", dict(x=X, alpha=1.5, beta=-0.2)),
    ("scaled_tanh", dict(x=X, alpha=1.5, beta=0.5)),
    ("sigmoid_hard", dict(x=X, alpha=0.3, beta=0.4)),
    ("thresholded_relu", dict(x=X, alpha=0.5)),
    ("softmax", dict(x=X, axis=1)), ("softmax", dict(x=X)),
    ("gelu", dict(x=X)), ("gelu", dict(x=X, mode="TANH_APPROXIMATION")),
    ("gelu", dict(x=X, mode="SIGMOID_APPROXIMATION")),
    ("prelu", dict(x=f32(2, 3, 4, 5), alpha=np.array([0.1, 0.2, 0.3], np.float32))),
    ("reduce_sum", dict(x=X, axes=[1])), ("reduce_mean", dict(x=X, axes=[0, 2], keep_dims=True)),
    ("reduce_max", dict(x=X, axes=[-1])), ("reduce_min", dict(x=X)),
    ("reduce_prod", dict(x=X, axes=[1, 2])), ("reduce_l1_norm", dict(x=X, axes=[2])),
    ("reduce_l2_norm", dict(x=X, axes=[2])), ("reduce_sum_square", dict(x=X, axes=[1])),
    ("reduce_log_sum", dict(x=POS, axes=[1])), ("reduce_log_sum_exp", dict(x=X, axes=[2])),
    ("reduce_argmax", dict(x=X, axis=1)), ("reduce_argmin", dict(x=X, axis=-1, keep_dims=True)),
    ("linear", dict(x=f32(2, 5), weight=f32(3, 5), bias=f32(3))),
    ("matmul", dict(x=f32(2, 3, 4), y=f32(2, 4, 5))),
    ("matmul", dict(x=f32(2, 4, 3), y=f32(4, 5), transpose_x=True, transpose_y=False)),
    ("matmul", dict(x=f32(3, 4), y=f32(2, 5, 4), transpose_y=True)),
    ("reshape", dict(x=X, shape=[4, -1])), 
    ("transpose", dict(x=X, perm=[2, 0, 1])), ("squeeze", dict(x=f32(1, 3, 1, 2), axes=[0, 2])),
    ("squeeze", dict(x=f32(1, 3, 1))), ("expand_dims", dict(x=X, axes=[0, -1])),
    ("slice_by_index", dict(x=X, begin=[0, 1, 3], end=[2, 3, 0], stride=[1, 1, -1])),
    ("slice_by_index", dict(x=X, begin=[1, 0, 0], end=[2, 3, 4], begin_mask=[False, True, True],
                            end_mask=[False, True, True], squeeze_mask=[True, False, False])),
    ("slice_by_index", dict(x=X, begin=[0, 0, 1], end=[2, 3, 4], stride=[1, 2, 2])),
    ("slice_by_size", dict(x=X, begin=[0, 1, 1], size=[-1, 2, 2])),
    ("concat", dict(values=(X, Y), axis=1)),
    ("split", dict(x=X, num_splits=2, axis=2)), ("split", dict(x=X, split_sizes=[1, 2], axis=1)),
    ("stack", dict(values=(X, Y), axis=1)), ("tile", dict(x=X, reps=[1, 2, 3])),
    ("reverse", dict(x=X, axes=[0, 2])),
    ("pad", dict(x=X, pad=np.array([1, 2, 0, 1], np.int32))),
    ("pad", dict(x=f32(1, 2, 4, 5), pad=np.array([1, 1, 2, 2], np.int32), mode="reflect")),
    ("pad", dict(x=f32(1, 2, 4, 5), pad=np.array([1, 0, 2, 1], np.int32), mode="replicate")),
    ("pad", dict(x=X, pad=np.array([1, 1], np.int32), constant_val=3.0)),
    ("fill", dict(shape=np.array([2, 3], np.int32), value=1.5)),
    ("range_1d", dict(start=1.0, end=7.0, step=1.5)),
    ("band_part", dict(x=f32(4, 5), lower=1, upper=2)),
    ("cumsum", dict(x=X, axis=1)),
    ("argsort", dict(x=X, axis=-1)), ("argsort", dict(x=X, axis=1, ascending=True)),
    ("topk", dict(x=X, k=2, axis=-1)), ("flatten2d", dict(x=X, axis=2)),
    ("shape", dict(x=X)), ("identity", dict(x=X)),
    ("select", dict(cond=X > 0, a=X, b=Y)),
    ("gather", dict(x=X, indices=np.array([2, 0, -1], np.int32), axis=1)),
    ("gather", dict(x=X, indices=np.array([[0, 1], [1, 0]], np.int32), axis=0)),
    ("gather", dict(x=X, indices=np.array([[0, 2], [1, 1]], np.int32), axis=1, batch_dims=1)),
    ("gather_along_axis", dict(x=X, indices=RNG.integers(0, 3, (2, 3, 4)).astype(np.int32), axis=1)),
    ("scatter_along_axis", dict(data=X, indices=np.array([[[0, 1, 2, 0]] * 3] * 2, np.int32)[:, :1],
                                updates=f32(2, 1, 4), axis=1, mode="update")),
    ("l2_norm", dict(x=f32(2, 3, 4, 5))),
    ("layer_norm", dict(x=X, axes=[-1], gamma=f32(4), beta=f32(4))),
    ("layer_norm", dict(x=X, axes=[1, 2], epsilon=1e-3)),
    ("layer_norm", dict(x=X, axes=[1], gamma=f32(3), beta=f32(3))),
    ("quantize", dict(input=X, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8")),
    ("quantize", dict(input=X * 3, scale=f32(3, lo=0.02, hi=0.1), axis=1,
                      zero_point=np.array([0, 100, 255], np.uint8), output_dtype="uint8")),
    ("fill_like", dict(ref_tensor=X, value=2.5)),
    ("non_zero", dict(x=np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]], np.float32))),
    ("softplus_parametric", dict(x=f32(2, 3, 4, 5), alpha=f32(3, lo=0.1, hi=1.0),
                                 beta=f32(3, lo=0.1, hi=1.0))),
    ("gather_along_axis", dict(x=X, indices=-1 - IDX, axis=1)),
]


@pytest.mark.parametrize("op_name,inputs", VALUE_INFERENCE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(VALUE_INFERENCE_CASES)])
def test_op_matches_coremltools_value_inference(op_name, inputs):
    ref, got = mil_op(op_name, **inputs)
    if ref is None:
        pytest.fail(f"{op_name}: coremltools computed no value; move the case to the torch table")
    if isinstance(ref, list):
        for r, g in zip(ref, got):
            close(r, g)
    else:
        close(ref, got, rtol=1e-4, atol=1e-5)


def t(a):
    return torch.from_numpy(np.asarray(a))


# Ops without value_inference: reference from torch's functional ops or NumPy.
IMG = f32(1, 3, 9, 11)
W = f32(4, 3, 3, 3)
B4 = f32(4)
SMALL = f32(1, 2, 3, 4)


def _bilinear_np(x, oh, ow, grid):
    """Separable linear sampling at explicit grid points (the MIL docs' definition)."""
    def along(a, axis, pts):
        lo = np.clip(np.floor(pts).astype(int), 0, a.shape[axis] - 1)
        hi = np.clip(lo + 1, 0, a.shape[axis] - 1)
        f = (pts - lo).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
        return np.take(a, lo, axis) * (1 - f) + np.take(a, hi, axis) * f
    return along(along(x, 2, grid(x.shape[2], oh)), 3, grid(x.shape[3], ow))


TORCH_CASES = [
    ("conv", dict(x=IMG, weight=W, bias=B4, strides=[1, 1], pad_type="valid"),
     lambda: torch.nn.functional.conv2d(t(IMG), t(W), t(B4))),
    ("conv", dict(x=IMG, weight=W, strides=[2, 2], pad_type="same", dilations=[1, 1]),
     None),
    ("conv", dict(x=IMG, weight=W, strides=[1, 2], pad_type="custom", pad=[1, 2, 0, 1],
                  dilations=[2, 1]),
     lambda: torch.nn.functional.conv2d(torch.nn.functional.pad(t(IMG), [0, 1, 1, 2]), t(W),
                                        stride=[1, 2], dilation=[2, 1])),
    ("conv", dict(x=f32(1, 4, 10), weight=f32(8, 2, 3), groups=2, pad_type="same"),
     None),
    ("conv_transpose", dict(x=f32(1, 4, 5, 6), weight=f32(4, 3, 3, 3), strides=[2, 2],
                            pad_type="valid"),
     None),
    ("max_pool", dict(x=IMG, kernel_sizes=[3, 3], strides=[2, 2], pad_type="valid"),
     lambda: torch.nn.functional.max_pool2d(t(IMG), 3, 2)),
    ("max_pool", dict(x=IMG, kernel_sizes=[3, 3], strides=[2, 2], pad_type="same"), None),
    ("avg_pool", dict(x=IMG, kernel_sizes=[2, 3], strides=[1, 2], pad_type="custom", pad=[1, 1, 1, 1],
                      exclude_padding_from_average=True),
     lambda: torch.nn.functional.avg_pool2d(t(IMG), [2, 3], [1, 2], [1, 1], count_include_pad=False)),
    ("avg_pool", dict(x=IMG, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid"),
     lambda: torch.nn.functional.avg_pool2d(t(IMG), 2, 2)),
    ("l2_pool", dict(x=IMG, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid"),
     lambda: torch.nn.functional.lp_pool2d(t(IMG), 2, 2, 2)),
    ("batch_norm", dict(x=IMG, mean=f32(3), variance=f32(3, lo=0.5, hi=2), gamma=f32(3), beta=f32(3),
                        epsilon=1e-3), None),
    ("instance_norm", dict(x=IMG, gamma=f32(3), beta=f32(3), epsilon=1e-5), None),
    ("upsample_bilinear", dict(x=SMALL, scale_factor_height=2, scale_factor_width=2,
                               align_corners=False),
     lambda: torch.nn.functional.interpolate(t(SMALL), scale_factor=2, mode="bilinear",
                                             align_corners=False)),
    ("resize_bilinear", dict(x=SMALL, target_size_height=5, target_size_width=6,
                             sampling_mode="STRICT_ALIGN_CORNERS"),
     lambda: torch.nn.functional.interpolate(t(SMALL), size=(5, 6), mode="bilinear",
                                             align_corners=True)),
    ("local_response_norm", dict(x=IMG, size=3, alpha=1e-3, beta=0.75, k=1.0),
     lambda: torch.nn.functional.local_response_norm(t(IMG), 3, 1e-3, 0.75, 1.0)),
]


def _reference(op_name, inputs, fn):
    if fn is not None:
        return fn().numpy()
    x = t(inputs.get("x"))
    if op_name == "conv" and inputs.get("pad_type") == "same":
        w = t(inputs["weight"])
        s = inputs.get("strides", [1] * (x.dim() - 2))
        g = inputs.get("groups", 1)
        if x.dim() == 3:
            return torch.nn.functional.conv1d(x, w, padding="same", groups=g).numpy()
        # TF-style SAME with stride 2: pad total = max((ceil(n/s)-1)*s + k - n, 0), extra at end
        pads = []
        for n, k, st in zip(x.shape[2:], w.shape[2:], s):
            total = max((-(-n // st) - 1) * st + k - n, 0)
            pads.append((total // 2, total - total // 2))
        xp = torch.nn.functional.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
        return torch.nn.functional.conv2d(xp, w, stride=s).numpy()
    if op_name == "conv_transpose":
        return torch.nn.functional.conv_transpose2d(x, t(inputs["weight"]), stride=2).numpy()
    if op_name == "max_pool":
        pads = []
        for n in x.shape[2:]:
            total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
            pads.append((total // 2, total - total // 2))
        xp = torch.nn.functional.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]],
                                     value=-float("inf"))
        return torch.nn.functional.max_pool2d(xp, 3, 2).numpy()
    if op_name == "batch_norm":
        return torch.nn.functional.batch_norm(x, t(inputs["mean"]), t(inputs["variance"]),
                                              t(inputs["gamma"]), t(inputs["beta"]), False, 0.0,
                                              1e-3).numpy()
    if op_name == "instance_norm":
        return torch.nn.functional.instance_norm(x, weight=t(inputs["gamma"]), bias=t(inputs["beta"]),
                                                 eps=1e-5).numpy()
    raise AssertionError(op_name)


@pytest.mark.parametrize("op_name,inputs,fn", TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_op_matches_torch_reference(op_name, inputs, fn):
    _, got = mil_op(op_name, **inputs)
    close(_reference(op_name, inputs, fn), got, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode,grid", [
    ("DEFAULT", lambda n, o: np.clip(np.arange(o) * n / o, 0, n - 1)),
    ("UNALIGN_CORNERS", lambda n, o: np.clip(np.arange(o) * n / o + 0.5 * n / o - 0.5, 0, n - 1)),
    ("OFFSET_CORNERS", lambda n, o: np.clip(0.5 * max(1, n - 1) / o + np.arange(o) * max(1, n - 1) / o,
                                            0, n - 1)),
])
def test_resize_bilinear_sampling_modes_follow_the_mil_grid(mode, grid):
    x = f32(1, 2, 3, 4)
    _, got = mil_op("resize_bilinear", x=x, target_size_height=5, target_size_width=7,
                    sampling_mode=mode)
    close(_bilinear_np(x.astype(np.float64), 5, 7, grid), got, rtol=1e-5, atol=1e-5)


def test_upsample_bilinear_align_corners_default_is_true():
    x = f32(1, 1, 2, 2)
    _, got = mil_op("upsample_bilinear", x=x, scale_factor_height=2, scale_factor_width=2)
    ref = torch.nn.functional.interpolate(t(x), size=(4, 4), mode="bilinear", align_corners=True)
    close(ref.numpy(), got)


COMBINE = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
           "max": np.maximum, "min": np.minimum, "update": lambda old, new: new}
UPD_A = f32(2, 1, 4, lo=0.5, hi=2.0)


def _scatter_along_axis_np(mode):
    out = X.copy()
    for i in range(2):
        for k in range(4):
            j = IDX[i, 0, k]
            out[i, j, k] = COMBINE[mode](out[i, j, k], UPD_A[i, 0, k])
    return out


def _sdpa_np(q, k, v, mask=None):
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v)


Q, K, V = f32(1, 2, 3, 4), f32(1, 2, 5, 4), f32(1, 2, 5, 4)
BOOL_MASK = np.tril(np.ones((3, 5), bool), 2)
FLOAT_MASK = f32(3, 5)
QI = RNG.integers(-128, 127, (2, 3, 4)).astype(np.int8)
U1 = f32(1, 2, 3, 4)
E1, E2 = f32(2, 3, 4), f32(2, 4, 5)
D8 = f32(1, 8, 2, 3)
S = f32(1, 2, 4, 6)
UPD = f32(2, 2, 4)
NUMPY_CASES = [
    ("silu", dict(x=X), lambda: X / (1 + np.exp(-X))),
    ("concat", dict(values=(X, Y), axis=2, interleave=True),
     lambda: np.stack([X, Y], axis=3).reshape(2, 3, 8)),
    ("one_hot", dict(indices=np.array([0, 2, 1], np.int32), one_hot_vector_size=4),
     lambda: np.eye(4, dtype=np.float32)[[0, 2, 1]]),
    ("gather_nd", dict(x=X, indices=np.array([[0, 1], [1, 2]], np.int32)),
     lambda: np.stack([X[0, 1], X[1, 2]])),
    ("scatter", dict(data=X, indices=np.array([2, 0], np.int32), updates=UPD, axis=1, mode="update"),
     lambda: np.concatenate([UPD[:, 1:2], X[:, 1:2], UPD[:, 0:1]], axis=1)),
    ("scatter", dict(data=X, indices=np.array([1, 1], np.int32), updates=UPD, axis=1, mode="add"),
     lambda: np.concatenate([X[:, :1], X[:, 1:2] + UPD[:, :1] + UPD[:, 1:2], X[:, 2:]], axis=1)),
    ("scatter_nd", dict(data=X, indices=np.array([[0, 1], [0, 1]], np.int32), updates=f32(2, 4) * 0 + 1,
                        mode="add"),
     lambda: X + np.pad(np.full((1, 1, 4), 2.0), [(0, 1), (1, 1), (0, 0)])),
    ("depth_to_space", dict(x=D8, block_size=2),
     lambda: D8.reshape(1, 2, 2, 2, 2, 3).transpose(0, 3, 4, 1, 5, 2).reshape(1, 2, 4, 6)),
    ("space_to_depth", dict(x=S, block_size=2),
     lambda: S.reshape(1, 2, 2, 2, 3, 2).transpose(0, 3, 5, 1, 2, 4).reshape(1, 8, 2, 3)),
    ("pixel_shuffle", dict(x=D8, upscale_factor=2),
     lambda: torch.nn.functional.pixel_shuffle(t(D8), 2).numpy()),
    ("pixel_unshuffle", dict(x=S, downscale_factor=np.uint32(2)),
     lambda: torch.nn.functional.pixel_unshuffle(t(S), 2).numpy()),
    ("crop", dict(x=f32(1, 2, 6, 7) * 0 + S[..., :1, :1], crop_height=[1, 2], crop_width=[2, 1]),
     lambda: np.broadcast_to(S[..., :1, :1], (1, 2, 3, 4))),
    ("upsample_nearest_neighbor", dict(x=U1, scale_factor_height=2, scale_factor_width=3),
     lambda: U1.repeat(2, 2).repeat(3, 3)),
    ("upsample_nearest_neighbor", dict(x=U1, scale_factor_height=1.5, scale_factor_width=1.5),
     lambda: U1[:, :, [0, 0, 1, 2]][:, :, :, [0, 0, 1, 2, 2, 3]]),
    ("resize_nearest_neighbor", dict(x=U1, target_size_height=6, target_size_width=8),
     lambda: U1.repeat(2, 2).repeat(2, 3)),
    *[("scatter_along_axis", dict(data=X, indices=IDX, updates=UPD_A, axis=1, mode=m),
       (lambda m=m: _scatter_along_axis_np(m))) for m in ("add", "sub", "mul", "div", "max", "min")],
    *[("scatter", dict(data=X, indices=np.array([2, 0], np.int32), updates=UPD, axis=1, mode=m),
       (lambda m=m: np.concatenate([COMBINE[m](X[:, :1], UPD[:, 1:2]), X[:, 1:2],
                                    COMBINE[m](X[:, 2:], UPD[:, :1])], axis=1)))
      for m in ("sub", "mul", "div", "max", "min")],
    ("scatter_nd", dict(data=X, indices=np.array([[1, 2], [0, 0]], np.int32), updates=f32(2, 4),
                        mode="update"), None),
    ("gather_nd", dict(x=X, indices=np.array([[[1], [0]], [[2], [2]]], np.int32), batch_dims=1),
     lambda: np.stack([X[0, [1, 0]], X[1, [2, 2]]])),
    ("one_hot", dict(indices=np.array([1, -1, 3], np.int32), one_hot_vector_size=4, axis=0,
                     on_value=5.0, off_value=-1.0),
     lambda: np.array([[-1, 5, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, 5]], np.float32).T),
    ("reshape_like", dict(x=f32(36), ref_tensors=(X, f32(5, 6)), begins=[0, 1], ends=[2, 2],
                          end_masks=[False, True]),
     None),  # dims 0:2 of X, then dims 1: of the second: [2, 3, 6]
    ("dequantize", dict(input=QI, scale=np.float32(0.1), zero_point=np.int8(-3)),
     lambda: (QI.astype(np.float32) + 3) * np.float32(0.1)),
    ("dequantize", dict(input=QI.astype(np.uint8), scale=f32(3, lo=0.1, hi=1), axis=1,
                        zero_point=np.array([0, 7, 200], np.uint8)),
     None),
    ("scaled_dot_product_attention", dict(query=Q, key=K, value=V, attn_mask=BOOL_MASK),
     lambda: _sdpa_np(Q, K, V, BOOL_MASK)),
    ("scaled_dot_product_attention", dict(query=Q, key=K, value=V, attn_mask=FLOAT_MASK),
     lambda: _sdpa_np(Q, K, V, FLOAT_MASK)),
]


@pytest.mark.parametrize("op_name,inputs,fn", NUMPY_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(NUMPY_CASES)])
def test_op_matches_numpy_reference(op_name, inputs, fn):
    opset = ct.target.iOS18 if op_name == "scaled_dot_product_attention" else ct.target.iOS17
    _, got = mil_op(op_name, opset=opset, **inputs)
    close(fn() if fn is not None else _numpy_reference(op_name, inputs), got, rtol=1e-5, atol=2e-5)


def _numpy_reference(op_name, inputs):
    if op_name == "scatter_nd":  # updates land at [1, 2] and [0, 0]
        out = X.copy()
        out[1, 2], out[0, 0] = inputs["updates"][0], inputs["updates"][1]
        return out
    if op_name == "reshape_like":
        return inputs["x"].reshape(2, 3, 6)
    if op_name == "dequantize":
        zp = inputs["zero_point"].astype(np.float32).reshape(1, 3, 1)
        return (inputs["input"].astype(np.float32) - zp) * inputs["scale"].reshape(1, 3, 1)
    raise AssertionError(op_name)


def test_einsum_follows_the_equation():
    got = OPS["einsum"](values=[t(E1), t(E2)], equation="abc,acd->abd").numpy()
    close(np.einsum("abc,acd->abd", E1, E2), got)


def test_cumsum_exclusive_reverse():
    # coremltools' own value_inference breaks on exclusive=True, so call the op directly
    got = OPS["cumsum"](x=t(X), axis=2, exclusive=True, reverse=True).numpy()
    close(np.flip(np.cumsum(np.flip(X, 2), 2), 2) - X, got)


def test_scaled_dot_product_attention_matches_softmax_formula():
    q, k, v = f32(1, 2, 4, 8), f32(1, 2, 5, 8), f32(1, 2, 5, 8)
    _, got = mil_op("scaled_dot_product_attention", opset=ct.target.iOS18, query=q, key=k, value=v)
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(8)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    close(np.einsum("bhqk,bhkd->bhqd", p, v), got, rtol=1e-4, atol=1e-5)
