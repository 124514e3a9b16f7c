"""The reference against the op's definition, written out as literal scalar loops on tiny shapes."""
import math

import pytest
import torch

from posemamba.reference import multi_path_selective_scan_ref

from conftest import random_scan_inputs


def scalar_loop_scan(u, delta, A, B, C, paths, D, z, delta_bias, mix, delta_softplus):
    batch, dim, seqlen = u.shape
    n_paths, _, d_state = A.shape
    y = torch.zeros(batch, dim, seqlen, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            for p in range(n_paths):
                h = [0.0] * d_state
                for s in range(seqlen):
                    l = int(paths[p, s])
                    x = float(delta[b, p, d, l]) + (float(delta_bias[p, d]) if delta_bias is not None else 0.0)
                    dt = (x if x > 20 else math.log1p(math.exp(x))) if delta_softplus else x
                    v = float(u[b, d, l])
                    if mix is not None and int(mix[p, l]) >= 0:
                        v += float(u[b, d, int(mix[p, l])])
                    for n in range(d_state):
                        h[n] = math.exp(dt * float(A[p, d, n])) * h[n] + dt * v * float(B[b, p, n, l])
                    y[b, d, l] += sum(float(C[b, p, n, l]) * h[n] for n in range(d_state))
                    y[b, d, l] += (float(D[p, d]) if D is not None else 0.0) * v
    if z is not None:
        y = y * torch.nn.functional.silu(z.double())
    return y


@pytest.mark.parametrize("options", [
    dict(with_D=True, with_z=True, with_bias=True, with_mix=True, delta_softplus=True),
    dict(with_D=False, with_z=False, with_bias=False, with_mix=False, delta_softplus=False),
    dict(with_D=True, with_z=False, with_bias=True, with_mix=False, delta_softplus=True),
])
@pytest.mark.parametrize("n_paths", [1, 3])
def test_reference_matches_scalar_loops(options, n_paths):
    delta_softplus = options["delta_softplus"]
    inputs = random_scan_inputs(2, 3, 7, n_paths, 4, torch.float64, **options)
    expected = scalar_loop_scan(**inputs, delta_softplus=delta_softplus)
    actual = multi_path_selective_scan_ref(**inputs, delta_softplus=delta_softplus)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_reference_keeps_input_dtype():
    inputs = random_scan_inputs(1, 2, 5, 2, 3, torch.bfloat16)
    assert multi_path_selective_scan_ref(**inputs).dtype == torch.bfloat16
