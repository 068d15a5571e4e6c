"""The deformation fields MLP_t: (x, t) -> dx, so the canonical point of x at time t is x + dx.

Both start exactly at the identity (the last layer is zero), so the static-to-dynamic schedule starts from
the canonical NeRF of frame 0:
- `DeformationMLP` (D-NeRF): an MLP of frequency-encoded x and t. Smooth in x by construction, so a large,
  local motion (a leg's swing) needs many iterations to carve out.
- `HashDeformation` (as TiNeuVox / 4D-GS, with a hash grid instead of voxels or planes): a small MLP on a 4D
  multi-resolution hash encoding of (x, t); time is resolved more coarsely than space (its finest level has
  `time_resolution` cells over the clip), so neighbouring frames share the coarse levels.
"""

from __future__ import annotations

import torch
from torch import nn

from fit4d.field_components.hash_grid import HashGrid, level_resolutions
from fit4d.field_components.mlp import MLP, frequency_encoding


def _zero_last_layer(net: nn.Sequential) -> None:
    last = net[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


class DeformationMLP(nn.Module):
    """D-NeRF's deformation: [x, sin/cos(2^k pi x)], [t, sin/cos(2^k pi t)] -> MLP -> dx."""

    def __init__(self, hidden_dim: int = 128, num_layers: int = 3, pos_freqs: int = 6, time_freqs: int = 6):
        super().__init__()
        self.pos_freqs, self.time_freqs = pos_freqs, time_freqs
        in_dim = 3 * (1 + 2 * pos_freqs) + (1 + 2 * time_freqs)
        self.net = MLP(in_dim, hidden_dim, 3, num_hidden=num_layers)
        _zero_last_layer(self.net)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (N, 3) in box coordinates [-1, 1]; t (N, 1) in [0, 1] -> dx (N, 3)."""
        feats = torch.cat([frequency_encoding(x, self.pos_freqs), frequency_encoding(t, self.time_freqs)], -1)
        return self.net(feats)


class HashDeformation(nn.Module):
    """(x, t) -> 4D hash encoding (space: base..max resolution; time: 2..time_resolution) -> MLP -> dx."""

    def __init__(
        self,
        num_levels: int = 8,
        features_per_level: int = 2,
        log2_hashmap_size: int = 17,
        base_resolution: int = 8,
        max_resolution: int = 128,
        time_resolution: int = 8,
        hidden_dim: int = 64,
        num_layers: int = 2,
        kernel: str = "torch",
    ) -> None:
        super().__init__()
        space = level_resolutions(num_levels, base_resolution, max_resolution)
        time = level_resolutions(num_levels, min(2, time_resolution), time_resolution)
        self.encoding = HashGrid(
            num_levels,
            features_per_level,
            log2_hashmap_size,
            axis_resolutions=[[s, s, s, f] for s, f in zip(space, time, strict=True)],
            kernel=kernel,
        )
        self.net = MLP(self.encoding.output_dim, hidden_dim, 3, num_hidden=num_layers)
        _zero_last_layer(self.net)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (N, 3) in box coordinates [-1, 1]; t (N, 1) in [0, 1] -> dx (N, 3)."""
        unit = torch.cat([(x + 1.0) * 0.5, t.to(x.dtype)], -1)
        return self.net(self.encoding(unit))
