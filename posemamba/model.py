"""PoseMamba (arXiv 2408.03540): 2D keypoint sequences (batch, T, J, C) -> 3D poses (batch, T, J, 3).

Written to be read next to the paper and the official code: same modules, same parameter names and
shapes (so official checkpoints load with strict=True), with the four cross-scans, their merge and
the global-local joint reorder done by one fused op, `multi_path_selective_scan`.
"""
import functools
import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import weight_dtype_for
from .ops import multi_path_selective_scan, pose_mix, pose_paths
from .paths import span_lengths_hint
from .reference import multi_path_selective_scan_ref

__all__ = ["PoseMamba", "BiSTSSMBlock", "BiSTSSM", "H36M_LIMB_ORDER", "PRESETS", "posemamba"]

# The local order of the global-local spatial scan: H36M-17 joints walked along the limbs (pelvis,
# right leg, pelvis, left leg, thorax, left arm, thorax, right arm); joint j of a frame also reads
# joint H36M_LIMB_ORDER[j] of that frame.
H36M_LIMB_ORDER = (0, 0, 1, 2, 3, 0, 4, 5, 6, 8, 11, 12, 13, 8, 14, 15, 16)

# The released configurations; T = 243 frames, ssm_ratio 2, mlp_ratio 2.
PRESETS = {
    "S": dict(dim=64, depth=10),
    "B": dict(dim=128, depth=10),
    "L": dict(dim=128, depth=20),
}

Backend = Literal["auto", "kernel", "reference"]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class BiSTSSM(nn.Module):
    """The bidirectional global-local spatio-temporal SSM over a T x J grid (VMamba's SS2D layout).

    x (batch, T, J, dim) -> in_proj -> (x, z); x -> depthwise 3x3 conv over (T, J) -> SiLU -> four
    scans (pose_paths: spatial-first, temporal-first, and both reversed; the spatial-first ones read
    x[j] + x[limb_order[j]]) fused in one op -> LayerNorm -> * SiLU(z) -> out_proj.
    """

    def __init__(self, dim: int, d_state: int = 16, ssm_ratio: float = 2.0, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, limb_order=H36M_LIMB_ORDER,
                 backend: Backend = "auto"):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        dt_rank = math.ceil(dim / 16)
        n_paths = 4
        self.d_state, self.d_inner, self.dt_rank, self.backend = d_state, d_inner, dt_rank, backend
        # Configuration, not state: it stays on the host (where pose_mix builds the mix) when the module moves.
        self.limb_order = torch.as_tensor(limb_order, dtype=torch.int64)
        self._path_index_cache = {}

        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner, bias=True)
        # Per-path, position-wise projections of the scan input to (dt, B, C), and dt to d_inner.
        self.x_proj_weight = nn.Parameter(torch.empty(n_paths, dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(n_paths, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(n_paths, d_inner))
        self.A_logs = nn.Parameter(torch.empty(n_paths * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(n_paths * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self._init_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm_parameters(self, dt_min, dt_max, dt_init_floor):
        n_paths, d_inner = self.dt_projs_bias.shape
        bound = self.d_inner ** -0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        # dt bias so that softplus(bias) is log-uniform in [dt_min, dt_max] (mamba's init).
        dt = torch.exp(torch.rand(n_paths, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A = -(1, 2, ..., N) for every channel; D = 1.
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(n_paths * d_inner, 1))
        self.Ds.fill_(1.0)

    def _path_indices(self, T: int, J: int, device: torch.device):
        """The op's `paths`, `mix` and `span_lengths` for a T x J clip, built on the host once per (T, J,
        device) rather than copied to the device every forward. The span lengths (the GPU's work-split
        hints, [0, T, 0, T]) are given rather than left to the op, which could not read them from the
        paths under torch.compile. Built as normal tensors even under torch.inference_mode, so that the
        op checks their values once, not every call (inference tensors have no version counter)."""
        key = (T, J, device)
        if key not in self._path_index_cache:
            with torch.inference_mode(False):
                self._path_index_cache[key] = self._build_path_indices(T, J, device)
        return self._path_index_cache[key]

    @torch.compiler.disable  # host-side index building, once per clip shape: nothing to trace
    def _build_path_indices(self, T: int, J: int, device: torch.device):
        paths = pose_paths(T, J)
        return paths.to(device), pose_mix(T, J, self.limb_order).to(device), span_lengths_hint(paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, T, J, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))     # (batch, d_inner, T, J)
        u = x.flatten(2)                                    # (batch, d_inner, L), l = t*J + j
        paths, mix, span_lengths = self._path_indices(T, J, x.device)

        # One matmul projects u for all four paths, as (batch, L, 4 n_proj) rows: u comes channels-last from
        # the depthwise convolution, so the matmul reads it in place, and each position's projections are
        # one row (no copy of u per path). The spatial-first paths (0, 2) project the global-local input
        # u + u[mix] in the official code (the op reads that same input through `mix`); by linearity that
        # is W u + (W u)[mix], so the gather takes their projections' rows, not d_inner channels of u, and
        # no mixed copy of u is made or kept for the backward. Partner positions repeat, so the gather's
        # backward scatters with repeats: advanced indexing's is deterministic on a GPU (sorted),
        # index_select's on a CPU (and a quarter of the time there).
        n_proj = self.x_proj_weight.shape[1]                                    # dt_rank + 2 N
        projected = torch.matmul(u.transpose(1, 2), self.x_proj_weight.view(4 * n_proj, self.d_inner).t())
        projected = projected.view(batch, T * J, 2, 2, n_proj)                  # (.., path // 2, path % 2, ..)
        spatial = projected[:, :, :, 0]                                         # paths 0 and 2
        partners = spatial.index_select(1, mix[0]) if u.device.type == "cpu" else spatial[:, mix[0]]
        spatial.add_(partners)  # in place: the matmul's backward keeps its inputs, not this output
        # (batch, 4, n_proj, L) views: the op lays delta, B and C out as its kernels read them, one copy.
        x_dbl = projected.view(batch, T * J, 4, n_proj).permute(0, 2, 3, 1)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        # A, D and the dt bias stay in float32 under half-precision inputs (float64 with float64 ones).
        weight_dtype = weight_dtype_for(u.dtype)
        A = -torch.exp(self.A_logs.to(weight_dtype)).view(4, self.d_inner, self.d_state)

        if self.backend == "reference":
            scan = multi_path_selective_scan_ref
        else:
            scan = functools.partial(multi_path_selective_scan, span_lengths=span_lengths)
        # Under autocast the projections may come out in another dtype than u; the op takes one. The
        # step sizes go in low-rank, (batch, 4, dt_rank, L), with their projection, which the op applies
        # as it reads them: the (batch, 4, d_inner, L) ones are never kept for the backward.
        dts, Bs, Cs = (t.to(u.dtype) for t in (dts, Bs, Cs))
        y = scan(u, dts, A, Bs, Cs, paths,
                 D=self.Ds.to(weight_dtype).view(4, self.d_inner), delta_bias=self.dt_projs_bias.to(weight_dtype),
                 mix=mix, delta_softplus=True, delta_proj_weight=self.dt_projs_weight.to(u.dtype),
                 channels_last_out=True)  # y.transpose(1, 2) then is (batch, L, d_inner) without a copy
        y = self.out_norm(y.transpose(1, 2).reshape(batch, T, J, self.d_inner))
        return self.out_proj(y * F.silu(z))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class BiSTSSMBlock(nn.Module):
    """x + DropPath(SSM(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, drop_path: float = 0.0, backend: Backend = "auto"):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.op = BiSTSSM(dim, backend=backend)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PoseMamba(nn.Module):
    """Lifts (batch, T, J, in_chans) 2D keypoints to (batch, T, J, 3) 3D joints."""

    def __init__(self, num_frame: int = 243, num_joints: int = 17, in_chans: int = 2, dim: int = 64,
                 depth: int = 10, mlp_ratio: float = 2.0, drop_path_rate: float = 0.2,
                 backend: Backend = "auto"):
        super().__init__()
        self.num_frame, self.num_joints, self.in_chans = num_frame, num_joints, in_chans
        self.Spatial_patch_to_embedding = nn.Linear(in_chans, dim)
        self.Spatial_pos_embed = nn.Parameter(torch.zeros(1, num_joints, dim))
        self.Temporal_pos_embed = nn.Parameter(torch.zeros(1, num_frame, dim))
        drop_paths = torch.linspace(0, drop_path_rate, depth).tolist()
        self.STEblocks = nn.ModuleList(BiSTSSMBlock(dim, mlp_ratio, p, backend) for p in drop_paths)
        self.TTEblocks = nn.ModuleList(BiSTSSMBlock(dim, mlp_ratio, p, backend) for p in drop_paths)
        self.Spatial_norm = nn.LayerNorm(dim, eps=1e-6)
        self.Temporal_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 3))

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        batch, T, J, C = keypoints.shape if keypoints.dim() == 4 else (None,) * 4
        if batch is None or J != self.num_joints or C != self.in_chans or T > self.num_frame:
            raise ValueError(f"keypoints must have shape (batch, T <= {self.num_frame}, {self.num_joints}, "
                             f"{self.in_chans}), got {tuple(keypoints.shape)}")
        x = self.Spatial_patch_to_embedding(keypoints) + self.Spatial_pos_embed      # joints' embedding
        x = self.Spatial_norm(self.STEblocks[0](x))
        x = x + self.Temporal_pos_embed[:, :T].unsqueeze(2)                          # per joint
        x = self.Temporal_norm(self.TTEblocks[0](x))
        for spatial, temporal in zip(self.STEblocks[1:], self.TTEblocks[1:]):
            x = self.Spatial_norm(spatial(x))
            x = self.Temporal_norm(temporal(x))
        return self.head(x)


def posemamba(preset: str = "S", **overrides) -> PoseMamba:
    """A released configuration ("S", "B" or "L"), with any PoseMamba argument overridden."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return PoseMamba(**{**PRESETS[preset], **overrides})
