"""A host-side check of csrc/cuda/norm.cu's GroupNorm statistics layout without a GPU.

gn_stats_kernel spreads a chunk of pixels over 256 threads in rows of channel
vectors (W vectors a row, K per thread, several rows at once) and then merges
the per-thread states by group through an index formula. This script replays
that layout in NumPy for the channel counts of the SD VAE and UNets and the
awkward ones of tests/test_cuda.py: every element of the chunk must be read
exactly once and every group must merge exactly its own values. It checks the
index arithmetic, not the compiled code. Keep it in step with the kernel.
"""
import numpy as np
import pytest

GN_THREADS, GN_MAX_K = 256, 8


def group_vector(cg, vmax):
    v = vmax
    while v > 1 and cg % v: v //= 2
    return v


def check(pixels, c, groups, vmax, sm_count=132, n=1):
    cg = c // groups
    V = group_vector(cg, vmax); cv_count = c // V
    fits = (cv_count + GN_THREADS - 1) // GN_THREADS <= GN_MAX_K
    if not fits: return "generic"
    want = (sm_count * 4 + n - 1) // n; most = (pixels + 15) // 16
    ch = max(1, min(want, most)); rows = (pixels + ch - 1) // ch; chunks = (pixels + rows - 1) // rows
    x = np.random.default_rng(0).standard_normal((pixels, c)) * 3 + 5
    W = min(cv_count, GN_THREADS); K = (cv_count + W - 1) // W; rows_at_once = GN_THREADS // W
    for chunk in range(chunks):
        p0 = chunk * rows; p1 = min(pixels, p0 + rows)
        states = {}
        seen = np.zeros((pixels, c), int)
        for t in range(GN_THREADS):
            r, cv0 = t // W, t % W
            st = [[] for _ in range(GN_MAX_K)]
            if r < rows_at_once:
                p = p0 + r
                while p < p1:
                    for k in range(GN_MAX_K):
                        cv = cv0 + k * W
                        if k < K and cv < cv_count:
                            vals = x[p, cv*V:(cv+1)*V]; seen[p, cv*V:(cv+1)*V] += 1
                            st[k].extend(vals)
                    p += rows_at_once
            for k in range(GN_MAX_K): states[t * GN_MAX_K + k] = st[k]
        assert (seen[p0:p1] == 1).all() and seen.sum() == (p1 - p0) * c, "coverage"
        for g in range(groups):
            vals = []
            for cv in range(g * cg // V, (g + 1) * cg // V):
                k, tc = cv // W, cv % W
                for rr in range(rows_at_once): vals.extend(states[(rr * W + tc) * GN_MAX_K + k])
            expect = x[p0:p1, g*cg:(g+1)*cg].ravel()
            assert len(vals) == len(expect) and np.isclose(np.sum(vals), expect.sum()), f"group {g}"
    return f"ok V={V} W={W} K={K} rows_at_once={rows_at_once} chunks={chunks}"

# pixels, channels, groups, widest channel vector: SD's VAE and UNet widths and tests/test_ops.py's odd ones
@pytest.mark.parametrize("pixels,c,groups,vmax", [
    (35, 12, 4, 8), (9, 6, 1, 8), (16, 10, 10, 8), (1, 32, 8, 8), (18, 15, 5, 8), (1200, 64, 32, 4),
    (4096, 128, 32, 8), (256, 320, 32, 8), (64, 2560, 32, 8), (64, 2560, 32, 4), (9, 4100, 4, 8),
    (16, 1920, 32, 8), (16, 960, 32, 8), (16, 4096, 1, 8)])
def test_statistics_layout_reads_each_value_once_per_group(pixels, c, groups, vmax):
    check(pixels, c, groups, vmax)
