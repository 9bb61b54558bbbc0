"""A host-side check of csrc/cuda/attention.cu's tensor-core kernel without a GPU.

attention_mma_kernel addresses mma.sync.m16n8k16 fragments by hand: Q, K and
V fragments from padded shared rows, the softmax probabilities repacked from
score accumulators into the A operand of the P V product. This script replays
that indexing lane by lane in float64 NumPy against the PTX ISA's fragment
layout (the one assumption it shares with the kernel) and compares the result
with softmax(q k^T / sqrt(d)) v, including masked key tiles and partial query
tiles. It checks the index arithmetic, not the compiled code: only a GPU run
of tests/test_ops.py does that. Keep it in step with the kernel.
"""
import numpy as np
import pytest

D, BQ, BK, LD = 64, 64, 64, 72

def frag_a_matrix(regs):  # regs[lane][4][2] -> 16x16
    A = np.full((16, 16), np.nan)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i, (r, c) in enumerate([(g, 2*t), (g+8, 2*t), (g, 2*t+8), (g+8, 2*t+8)]):
            for j in range(2):
                A[r, c + j] = regs[lane][i][j]
    return A

def frag_b_matrix(b0, b1):  # per lane 2 regs of 2 halves -> 16x8 (k x n)
    B = np.full((16, 8), np.nan)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for j in range(2):
            B[2*t + j, g] = b0[lane][j]
            B[2*t + 8 + j, g] = b1[lane][j]
    return B

def mma(c, a, b0, b1):  # c[lane][4]
    A, B = frag_a_matrix(a), frag_b_matrix(b0, b1)
    assert not np.isnan(A).any() and not np.isnan(B).any()
    C = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        C[g, 2*t], C[g, 2*t+1], C[g+8, 2*t], C[g+8, 2*t+1] = c[lane]
    Dm = A @ B + C
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        c[lane] = [Dm[g, 2*t], Dm[g, 2*t+1], Dm[g+8, 2*t], Dm[g+8, 2*t+1]]

def ld32(mem, off):  # two consecutive 16-bit values: (low, high)
    return (mem[off], mem[off + 1])

def run_block(q, k, v, q0, scale_log2):
    lq, lk = q.shape[0], k.shape[0]
    Qs = np.zeros(BQ * LD); Ks = np.zeros(BK * LD); Vs = np.zeros(BK * LD)
    for r in range(BQ):
        if q0 + r < lq: Qs[r*LD:r*LD+D] = q[q0 + r]
    out = np.full((BQ, D), np.nan)
    for warp in range(4):
        # per-lane state
        qa = [[None]*4 for _ in range(32)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            r0 = warp*16 + g
            for kk in range(4):
                p = r0*LD + kk*16 + 2*t
                qa[lane][kk] = [ld32(Qs, p), ld32(Qs, p + 8*LD), ld32(Qs, p + 8), ld32(Qs, p + 8*LD + 8)]
        acc = [[[0.0]*4 for _ in range(8)] for _ in range(32)]
        m0 = [-np.inf]*32; m1 = [-np.inf]*32; l0 = [0.0]*32; l1 = [0.0]*32
        for k0 in range(0, lk, BK):
            Ks[:] = 0; Vs[:] = 0
            for r in range(BK):
                if k0 + r < lk:
                    Ks[r*LD:r*LD+D] = k[k0 + r]; Vs[r*LD:r*LD+D] = v[k0 + r]
            s = [[[0.0]*4 for _ in range(8)] for _ in range(32)]
            for nt in range(8):
                for kk in range(4):
                    a = [qa[lane][kk] for lane in range(32)]
                    b0, b1 = [], []
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        kr = (nt*8 + g)*LD + 2*t
                        b0.append(ld32(Ks, kr + kk*16)); b1.append(ld32(Ks, kr + kk*16 + 8))
                    cs = [s[lane][nt] for lane in range(32)]
                    mma(cs, a, b0, b1)
                    for lane in range(32): s[lane][nt] = cs[lane]
            mx0 = [0]*32; mx1 = [0]*32
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                a0m, a1m = -np.inf, -np.inf
                for nt in range(8):
                    for e in range(4):
                        key = k0 + nt*8 + 2*t + (e & 1)
                        val = s[lane][nt][e]*scale_log2 if key < lk else -np.inf
                        s[lane][nt][e] = val
                        if e < 2: a0m = max(a0m, val)
                        else: a1m = max(a1m, val)
                mx0[lane], mx1[lane] = a0m, a1m
            # quad reductions (xor 1, 2)
            for arr in (mx0, mx1):
                for o in (1, 2):
                    arr[:] = [max(arr[l], arr[l ^ o]) for l in range(32)]
            for lane in range(32):
                mn0, mn1 = max(m0[lane], mx0[lane]), max(m1[lane], mx1[lane])
                a0, a1 = 2.0**(m0[lane] - mn0), 2.0**(m1[lane] - mn1)
                m0[lane], m1[lane] = mn0, mn1
                ls0 = ls1 = 0.0
                for nt in range(8):
                    e = s[lane][nt]
                    e[0] = 2.0**(e[0]-mn0); e[1] = 2.0**(e[1]-mn0); e[2] = 2.0**(e[2]-mn1); e[3] = 2.0**(e[3]-mn1)
                    ls0 += e[0] + e[1]; ls1 += e[2] + e[3]
                l0[lane] = l0[lane]*a0 + ls0; l1[lane] = l1[lane]*a1 + ls1
                for nt in range(8):
                    acc[lane][nt][0] *= a0; acc[lane][nt][1] *= a0; acc[lane][nt][2] *= a1; acc[lane][nt][3] *= a1
            for j in range(4):
                pa = [[(s[l][2*j][0], s[l][2*j][1]), (s[l][2*j][2], s[l][2*j][3]), (s[l][2*j+1][0], s[l][2*j+1][1]),
                       (s[l][2*j+1][2], s[l][2*j+1][3])] for l in range(32)]
                for nt in range(8):
                    b0, b1 = [], []
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        p = (j*16 + 2*t)*LD + g + nt*8
                        b0.append((Vs[p], Vs[p + LD])); b1.append((Vs[p + 8*LD], Vs[p + 9*LD]))
                    cs = [acc[lane][nt] for lane in range(32)]
                    mma(cs, pa, b0, b1)
                    for lane in range(32): acc[lane][nt] = cs[lane]
        for arr in (l0, l1):
            for o in (1, 2):
                arr[:] = [arr[l] + arr[l ^ o] for l in range(32)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            r0 = warp*16 + g
            for nt in range(8):
                c = nt*8 + 2*t
                if q0 + r0 < lq: out[r0, c:c+2] = [acc[lane][nt][0]/l0[lane], acc[lane][nt][1]/l0[lane]]
                if q0 + r0 + 8 < lq: out[r0+8, c:c+2] = [acc[lane][nt][2]/l1[lane], acc[lane][nt][3]/l1[lane]]
    return out

@pytest.mark.parametrize("lq,lk", [(70, 77), (64, 13), (30, 130)])  # partial query tiles, masked key tiles
def test_fragment_indexing_computes_attention(lq, lk):
    rng = np.random.default_rng(lq * 1000 + lk)
    q, k, v = rng.standard_normal((lq, D)), rng.standard_normal((lk, D)), rng.standard_normal((lk, D))
    s = q @ k.T / np.sqrt(D)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = p @ v
    got = np.concatenate([run_block(q, k, v, q0, np.log2(np.e) / np.sqrt(D))[:min(BQ, lq - q0)]
                          for q0 in range(0, lq, BQ)])
    err = np.abs(got - ref).max()
    assert err < 1e-12, f"the fragment indexing does not compute attention: max |error| {err:.1e}"
