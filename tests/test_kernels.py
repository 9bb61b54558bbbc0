"""Each CPU kernel against a float64 NumPy reference, on awkward shapes.

3x3 stride-1 convolutions run Winograd F(2x2, 3x3); other shapes im2col or a
direct product; the cases below cover each path."""
import numpy as np
import pytest

from d3sr._native import _core
from conftest import assert_close

TOL = 2e-6  # float32 accumulation against float64


def conv2d_ref(x, w, b, stride, pad):
    """x [n, h, w, cin], w [cout, cin, k, k], pad (top, bottom, left, right) -> [n, ho, wo, cout]."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
    n, hp, wp, _ = x.shape
    cout, _, k, _ = w.shape
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    out = np.zeros((n, ho, wo, cout))
    for ky in range(k):
        for kx in range(k):
            patch = x[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride, :]
            out += patch @ w[:, :, ky, kx].astype(np.float64).T
    return out + (0 if b is None else b.astype(np.float64))


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


CONV_CASES = [
    # n, h, w, cin, cout, k, stride, pad
    (1, 7, 5, 3, 5, 3, 1, (1, 1, 1, 1)),
    (2, 9, 11, 13, 7, 3, 2, (0, 1, 0, 1)),  # the VAE's downsample padding
    (1, 1, 1, 6, 3, 1, 1, (0, 0, 0, 0)),     # 1x1 spatial, pointwise
    (3, 5, 6, 10, 17, 1, 1, (0, 0, 0, 0)),
    (1, 4, 3, 5, 4, 3, 1, (2, 0, 1, 2)),     # asymmetric padding
    (1, 33, 40, 9, 12, 3, 1, (1, 1, 1, 1)),  # many tiles
    (2, 6, 6, 4, 4, 5, 3, (2, 2, 2, 2)),
    (1, 1, 1, 7, 2, 3, 1, (1, 1, 1, 1)),     # 1x1 input, 3x3 kernel
    (2, 40, 38, 64, 72, 3, 1, (1, 1, 1, 1)),  # Winograd over several chunks of tiles
    (1, 6, 9, 5, 3, 3, 1, (0, 0, 0, 0)),     # Winograd without padding, odd output
]


@pytest.mark.parametrize("n,h,w,cin,cout,k,stride,pad", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(n, h, w, cin, cout, k, stride, pad, bias):
    rng = np.random.default_rng(n * 1000 + h * 10 + cin)
    x, wt = rand(rng, n, h, w, cin), rand(rng, cout, cin, k, k)
    b = rand(rng, cout) if bias else None
    expected = conv2d_ref(x, wt, b, stride, pad)
    assert_close(_core.conv2d(x, wt, b, stride, pad), expected, TOL, "conv2d")


def test_conv2d_residual_is_added():
    rng = np.random.default_rng(5)
    x, wt, b = rand(rng, 2, 6, 5, 8), rand(rng, 12, 8, 3, 3), rand(rng, 12)
    expected = conv2d_ref(x, wt, b, 1, (1, 1, 1, 1))
    res = rand(rng, *expected.shape)
    assert_close(_core.conv2d(x, wt, b, 1, (1, 1, 1, 1), res), expected + res, TOL, "conv2d + residual")


def test_conv2d_many_threads_same_result():
    rng = np.random.default_rng(6)
    x, wt = rand(rng, 1, 64, 48, 16), rand(rng, 24, 16, 3, 3)
    _core.set_num_threads(1)
    one = _core.conv2d(x, wt, None, 1, (1, 1, 1, 1))
    _core.set_num_threads(0)
    assert_close(_core.conv2d(x, wt, None, 1, (1, 1, 1, 1)), one, 1e-6, "threads")


def group_norm_ref(x, groups, gamma, beta, eps, silu):
    n, h, w, c = x.shape
    xg = x.astype(np.float64).reshape(n, h * w, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = xg.var(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(n, h, w, c) * gamma + beta
    return y / (1 + np.exp(-y)) if silu else y


@pytest.mark.parametrize("n,h,w,c,groups", [
    (1, 5, 7, 12, 4), (2, 3, 3, 6, 1), (1, 4, 4, 10, 10), (1, 1, 1, 32, 8), (3, 9, 2, 15, 5), (1, 40, 30, 64, 32)])
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm(n, h, w, c, groups, silu):
    rng = np.random.default_rng(c * 7 + groups)
    x = rand(rng, n, h, w, c) * 3 + 5  # a large mean: the variance must not cancel away
    gamma, beta = rand(rng, c), rand(rng, c)
    out = _core.group_norm(x, groups, gamma, beta, 1e-6, silu)
    if h * w * (c // groups) == 1:  # one value per group: the output is beta (PyTorch agrees)
        expected = np.broadcast_to(beta, x.shape).astype(np.float64)
        expected = expected / (1 + np.exp(-expected)) if silu else expected
    else:
        expected = group_norm_ref(x, groups, gamma, beta, 1e-6, silu)
    assert_close(out, expected, TOL, "group_norm")


def test_group_norm_rejects_bad_groups():
    x = np.zeros((1, 2, 2, 6), np.float32)
    with pytest.raises(ValueError, match="groups"):
        _core.group_norm(x, 4, np.ones(6, np.float32), np.zeros(6, np.float32), 1e-6)


def attention_ref(q, k, v, heads):
    n, lq, width = q.shape
    d = width // heads
    out = np.zeros(q.shape)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        s = q[:, :, sl].astype(np.float64) @ k[:, :, sl].astype(np.float64).transpose(0, 2, 1) / np.sqrt(d)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        out[:, :, sl] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, :, sl].astype(np.float64)
    return out


@pytest.mark.parametrize("n,lq,lk,width,heads", [
    (1, 1, 1, 8, 1), (2, 77, 13, 24, 3), (1, 130, 130, 40, 5), (1, 65, 77, 64, 1), (3, 7, 200, 12, 2)])
def test_attention(n, lq, lk, width, heads):
    rng = np.random.default_rng(lq + lk)
    q, k, v = rand(rng, n, lq, width) * 2, rand(rng, n, lk, width) * 2, rand(rng, n, lk, width)
    assert_close(_core.attention(q, k, v, heads), attention_ref(q, k, v, heads), TOL, "attention")


def test_attention_rejects_mismatch():
    q = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ValueError):
        _core.attention(q, np.zeros((1, 4, 6), np.float32), np.zeros((1, 4, 6), np.float32), 2)
    with pytest.raises(ValueError, match="heads"):
        _core.attention(q, q, q, 3)


@pytest.mark.parametrize("rows,fin,fout", [(1, 1, 1), (5, 13, 7), (300, 40, 33), (77, 1024, 320)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(rows, fin, fout, bias):
    rng = np.random.default_rng(rows + fin)
    x, wt = rand(rng, rows, fin), rand(rng, fout, fin)
    b = rand(rng, fout) if bias else None
    expected = x.astype(np.float64) @ wt.astype(np.float64).T + (0 if b is None else b)
    assert_close(_core.linear(x, wt, b), expected, TOL, "linear")


def nearest_ref(x, out_h, out_w):
    """PyTorch's F.interpolate(mode="nearest") source indices, on [n, h, w, c]."""
    def index(out, size):
        if out == size:
            return np.arange(out)
        if out == 2 * size:
            return np.arange(out) // 2
        scale = np.float32(size) / np.float32(out)
        return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(int), size - 1)
    return x[:, index(out_h, x.shape[1])][:, :, index(out_w, x.shape[2])]


@pytest.mark.parametrize("shape,size", [((1, 1, 1, 1), (2, 2)), ((2, 3, 5, 7), (6, 10)), ((1, 4, 4, 16), (7, 9)),
                                        ((1, 5, 3, 2), (5, 3)), ((1, 3, 3, 4), (8, 5))])
def test_upsample_nearest(shape, size):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_core.simple_op(_core.OP_UPSAMPLE_NEAREST, x, size=size), nearest_ref(x, *size))


@pytest.mark.parametrize("rows,c", [(1, 1), (7, 5), (77, 320), (300, 64)])
def test_layer_norm(rows, c):
    rng = np.random.default_rng(rows + c)
    x = rand(rng, rows, c) * 2 + 3
    gamma, beta = rand(rng, c), rand(rng, c)
    xd = x.astype(np.float64)
    expected = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * gamma + beta
    assert_close(_core.layer_norm(x, gamma, beta, 1e-5), expected, TOL, "layer_norm")


def gelu_ref(x):
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 14), (1, 1, 77, 640)])
def test_geglu(shape):
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(np.float32)
    half = shape[-1] // 2
    xd = x.astype(np.float64)
    assert_close(_core.simple_op(_core.OP_GEGLU, x), xd[..., :half] * gelu_ref(xd[..., half:]), TOL, "geglu")


@pytest.mark.parametrize("kind,ref", [
    ("OP_SILU", lambda x: x / (1 + np.exp(-x))),
    ("OP_RELU", lambda x: np.maximum(x, 0)),
    ("OP_LEAKY_RELU", lambda x: np.where(x > 0, x, 0.2 * x)),
    ("OP_GELU", gelu_ref),
])
def test_activations(kind, ref):
    x = (np.random.default_rng(2).standard_normal((2, 3, 4, 5)) * 10).astype(np.float32)
    assert_close(_core.simple_op(getattr(_core, kind), x), ref(x.astype(np.float64)), TOL, kind)


def test_add_concat_and_channel_offset():
    rng = np.random.default_rng(3)
    a, b = rand(rng, 2, 3, 4, 5), rand(rng, 2, 3, 4, 5)
    np.testing.assert_array_equal(_core.simple_op(_core.OP_ADD, a, b), a + b)
    c = rand(rng, 2, 3, 4, 7)
    np.testing.assert_array_equal(_core.simple_op(_core.OP_CONCAT, a, c), np.concatenate([a, c], axis=-1))
    offset = rand(rng, 2, 1, 1, 5)
    np.testing.assert_array_equal(_core.simple_op(_core.OP_ADD_CHANNEL_OFFSET, a, offset), a + offset)
    with pytest.raises(ValueError, match="offset"):
        _core.simple_op(_core.OP_ADD_CHANNEL_OFFSET, a, rand(rng, 2, 1, 1, 4))
    with pytest.raises(ValueError, match="concat"):
        _core.simple_op(_core.OP_CONCAT, a, rand(rng, 2, 3, 3, 5))


def test_kernels_reject_wrong_dtype():
    with pytest.raises(TypeError, match="float32"):
        _core.conv2d(np.zeros((1, 3, 3, 2)), np.zeros((1, 2, 1, 1), np.float32))


# ---- ops of the perceptual metrics -------------------------------------------

def max_pool_ref(x, k, s):
    n, h, w, c = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((n, ho, wo, c), -np.inf, np.float32)
    for ky in range(k):
        for kx in range(k):
            out = np.maximum(out, x[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s])
    return out


@pytest.mark.parametrize("shape,k,s", [((1, 7, 9, 5), 3, 2), ((2, 8, 8, 64), 2, 2), ((1, 3, 3, 1), 3, 2),
                                       ((1, 5, 4, 3), 2, 2), ((3, 11, 6, 17), 3, 1)])
def test_max_pool(shape, k, s):
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_core.simple_op(_core.OP_MAX_POOL, x, size=(k, s)), max_pool_ref(x, k, s))


def test_max_pool_rejects_small_input():
    with pytest.raises(ValueError, match="smaller than the window"):
        _core.simple_op(_core.OP_MAX_POOL, np.zeros((1, 2, 5, 1), np.float32), size=(3, 2))


def l2_pool_ref(x):
    """DISTS' L2pooling: sqrt(depthwise conv(x^2, hann 3x3 / 16, stride 2, pad 1) + 1e-12)."""
    g = np.array([0.25, 0.5, 0.25])
    window = g[:, None] * g[None, :]
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = np.zeros((n, ho, wo, c))
    for ky in range(3):
        for kx in range(3):
            out += window[ky, kx] * sq[:, ky:ky + 2 * (ho - 1) + 1:2, kx:kx + 2 * (wo - 1) + 1:2]
    return np.sqrt(out + 1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 7, 8, 5), (1, 16, 15, 64), (1, 2, 3, 130)])
def test_l2_pool(shape):
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    assert_close(_core.simple_op(_core.OP_L2_POOL, x), l2_pool_ref(x), TOL, "l2_pool")


def lpips_distance_ref(a, b, w):
    a, b = a.astype(np.float64), b.astype(np.float64)
    na = a / (np.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10)
    nb = b / (np.sqrt((b ** 2).sum(-1, keepdims=True)) + 1e-10)
    return (((na - nb) ** 2) @ w.astype(np.float64)).mean(axis=(1, 2))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 7, 64), (3, 13, 4, 192), (1, 31, 33, 3)])
def test_lpips_distance(shape):
    rng = np.random.default_rng(10)
    a = np.maximum(rand(rng, *shape), 0) + 0.01  # ReLU features
    b = np.maximum(rand(rng, *shape), 0) + 0.01
    w = np.abs(rand(rng, shape[-1]))
    assert_close(_core.lpips_distance(a, b, w), lpips_distance_ref(a, b, w), TOL, "lpips_distance")


def test_lpips_distance_of_identical_features_is_zero():
    a = np.abs(rand(np.random.default_rng(11), 2, 4, 4, 8))
    np.testing.assert_array_equal(_core.lpips_distance(a, a, np.ones(8, np.float32)), [0, 0])


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 9, 7, 5), (1, 40, 30, 64)])
def test_pair_moments(shape):
    rng = np.random.default_rng(12)
    a = rand(rng, *shape) * 2 + 30  # a large mean: the variance must not cancel away
    b = 0.5 * a + rand(rng, *shape)
    ad, bd = a.astype(np.float64), b.astype(np.float64)
    ma, mb = ad.mean(axis=(1, 2)), bd.mean(axis=(1, 2))
    va, vb = ad.var(axis=(1, 2)), bd.var(axis=(1, 2))
    cov = ((ad - ma[:, None, None]) * (bd - mb[:, None, None])).mean(axis=(1, 2))
    expected = np.stack([ma, mb, va, vb, cov], axis=1)[:, None]  # [n, 1, 5, c]
    out = _core.simple_op(_core.OP_PAIR_MOMENTS, a, b)
    assert out.shape == (shape[0], 1, 5, shape[3])
    assert_close(out, expected, TOL, "pair_moments")
    assert_close(out[:, 0, 2:], expected[:, 0, 2:], 1e-5, "pair_moments variances")
