"""The GeoMIM decoder at stride 16: neck, mask tokens, ViT blocks with Cross-View Attention, and
the camera-aware depth branch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .swin import MASKED, Mlp, SwinBlock
from .view_transformer import CameraAwareGate


def sincos_position_embedding(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding (MAE's): half the channels encode the row, half the column.
    Returns (height * width, dim)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                   indexing="ij")
    parts = []
    for positions in (rows.reshape(-1), columns.reshape(-1)):
        angles = positions[:, None] * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, 1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C), global attention over the T tokens; mask: additive (T, T) or None."""
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, channels))


class TransformerBlock(nn.Module):
    """Pre-norm attention and MLP with residuals. ``zero_init_outputs`` starts it as the identity
    (the official Cross-View Attention blocks)."""

    gradient_checkpointing = False

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, zero_init_outputs: bool = False,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._gradient_checkpointing_func = checkpoint
        if zero_init_outputs:
            # The projections that write into the residual stream start at zero: the block starts as
            # the identity. The flag also tells a model-wide initialiser to keep them so.
            for layer in (self.attn.proj, self.mlp.fc2):
                layer.zero_init = True
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(self._forward, x, mask, use_reentrant=False)
        return self._forward(x, mask)


class CrossViewAttention(nn.Module):
    """Each image row attends jointly across the same row of every view (no position bias):
    (B * V, H * W, C) -> (B * H, V * W, C), a transformer block, and back."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.block = TransformerBlock(dim, num_heads, mlp_ratio, zero_init_outputs=True)

    def forward(self, x: torch.Tensor, num_views: int, height: int, width: int,
                groups: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * V, H * W, C) tokens of each view; groups: (H, W) token groups shared by the views
        (then a token only attends to its own group), or None. Returns the same shape as x."""
        batch_views, _, channels = x.shape
        batch = batch_views // num_views
        rows = x.view(batch, num_views, height, width, channels).permute(0, 2, 1, 3, 4)
        mask = None
        if groups is not None:  # (H, V*W) groups of each row's tokens; rows differ, so a mask per row
            row_groups = groups.repeat(1, num_views)
            mask = (row_groups[:, :, None] != row_groups[:, None, :]).float() * MASKED  # (H, V*W, V*W)
            mask = mask[None, :, None].expand(batch, -1, -1, -1, -1).reshape(batch * height, 1, *mask.shape[1:])
        rows = self.block(rows.reshape(batch * height, num_views * width, channels), mask)
        rows = rows.view(batch, height, num_views, width, channels).permute(0, 2, 1, 3, 4)
        return rows.reshape(batch_views, height * width, channels)


class GeoMIMDecoder(nn.Module):
    """Stride-16 decoder of the masked encoder features into semantic and depth features per view.

    The neck adds the upsampled stride-32 features to the stride-16 ones and runs one Swin block
    (with the same group masks as the encoder) before the projection to the decoder width. Then
    masked cells get the mask token, a fixed sin-cos position embedding is added, and ViT blocks run
    over each view with Cross-View Attention after ``cross_view_layers``. The depth branch leaves
    after ``depth_branch_start``, is gated by the camera-aware module, and has its own blocks; with
    ``depth_branch=False`` (the ablation without it) there is none and the depth comes from the
    semantic features alone.
    """

    def __init__(self, encoder_dims: tuple[int, int], feature_size: tuple[int, int], hidden_size: int = 512,
                 num_layers: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, neck_window: int = 7,
                 neck_heads: int = 16, cross_view_layers: Sequence[int] = (1, 5), depth_branch_start: int = 3,
                 depth_branch_layers: int = 4, depth_branch_cross_view_layers: Sequence[int] = (1,),
                 camera_hidden_size: int = 512, eps: float = 1e-5, depth_branch: bool = True):
        super().__init__()
        c4, c5 = encoder_dims
        self.feature_size = feature_size
        self.neck_fc = nn.Linear(c5, c4)
        window = (min(neck_window, feature_size[0]), min(neck_window, feature_size[1]))
        self.neck_block = SwinBlock(c4, neck_heads, window, eps=eps)
        self.neck_norm = nn.LayerNorm(c4, eps=eps)
        self.decoder_embed = nn.Linear(c4, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.register_buffer("position_embedding", sincos_position_embedding(*feature_size, hidden_size)[None],
                             persistent=False)
        self.hidden_size = hidden_size
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.cross_view = nn.ModuleDict({str(i): CrossViewAttention(hidden_size, num_heads, mlp_ratio)
                                         for i in cross_view_layers})
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.depth_branch = depth_branch
        if depth_branch:
            self.depth_branch_start = depth_branch_start
            self.camera_gate = CameraAwareGate(hidden_size, camera_hidden_size)
            self.depth_blocks = nn.ModuleList(TransformerBlock(hidden_size, num_heads, mlp_ratio)
                                              for _ in range(depth_branch_layers))
            self.depth_cross_view = nn.ModuleDict({str(i): CrossViewAttention(hidden_size, num_heads, mlp_ratio)
                                                   for i in depth_branch_cross_view_layers})
            self.depth_norm = nn.LayerNorm(hidden_size, eps=1e-6)

    def reset_buffers(self) -> None:
        """Recompute the non-persistent position embedding (a model materialised from the meta device lacks it)."""
        self.position_embedding.copy_(sincos_position_embedding(*self.feature_size, self.hidden_size)[None])

    def neck(self, c4: torch.Tensor, c5: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        """c4: (B*V, h, w, C4), c5: (B*V, h/2, w/2, C5) channels last; groups: (h, w) token groups.
        Returns (B*V, h*w, hidden)."""
        up = self.neck_fc(c5).permute(0, 3, 1, 2)
        up = F.interpolate(up, size=c4.shape[1:3], mode="nearest").permute(0, 2, 3, 1)
        x = self.neck_block(c4 + up, groups)
        return self.decoder_embed(self.neck_norm(x)).flatten(1, 2)

    def forward(self, c4: torch.Tensor, c5: torch.Tensor, num_views: int, cameras: torch.Tensor,
                masked: torch.Tensor | None = None, groups: torch.Tensor | None = None):
        """c4, c5: encoder features (B*V, h, w, C) channels last; cameras: (B*V, 22) camera vectors;
        masked: (h, w) bool, cells to fill with the mask token; groups: (h, w) token groups for the
        neck's attention. Returns semantic and depth features, each (B*V, hidden, h, w); the depth
        features are None without the depth branch."""
        height, width = self.feature_size
        x = self.neck(c4, c5, groups)  # (B*V, h*w, D)
        if masked is not None:
            fill = masked.reshape(1, -1, 1).to(x.device)
            x = torch.where(fill, self.mask_token.to(x.dtype).expand_as(x), x)
        x = x + self.position_embedding.to(x.dtype)
        depth = None
        for index, block in enumerate(self.blocks):
            x = block(x)
            if str(index) in self.cross_view:
                x = self.cross_view[str(index)](x, num_views=num_views, height=height, width=width)
            if self.depth_branch and index == self.depth_branch_start:
                depth = self.camera_gate(x, cameras)

        def to_map(tokens):
            return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

        if not self.depth_branch:
            return to_map(self.norm(x)), None
        for index, block in enumerate(self.depth_blocks):
            depth = block(depth)
            if str(index) in self.depth_cross_view:
                depth = self.depth_cross_view[str(index)](depth, num_views=num_views, height=height, width=width)
        return to_map(self.norm(x)), to_map(self.depth_norm(depth))
