"""The GeoMIM Swin Transformer encoder, per view, with MixMAE-style group masking.

Two layouts: the official GeoMIM/MixMAE one (no shifted windows, an absolute position embedding
resized to the token grid, windows per stage) and the timm/original Swin one (shifted windows every
second block), which computes exactly what timm's ``SwinTransformer`` computes on the same weights.

Masking: every token carries a group id (0 or 1; 2 for padding). With ``token_groups`` given,
attention inside a window only connects tokens of the same group, so each group is encoded as if
the other were absent, in one pass. Patch embedding and merging never mix cells when the masking
cell is a multiple of the deepest stride.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

PAD_GROUP = 2  # group id of the padding tokens added to fill whole windows or cells
MASKED = -1e9  # additive attention bias between tokens of different groups


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, probability: float = 0.0):
        super().__init__()
        self.probability = probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probability == 0.0 or not self.training:
            return x
        keep = 1.0 - self.probability
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """(Wh*Ww, Wh*Ww) index into the (2Wh-1)(2Ww-1) bias table, Swin's layout."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    relative[:, :, 0] += window[0] - 1
    relative[:, :, 1] += window[1] - 1
    relative[:, :, 0] *= 2 * window[1] - 1
    return relative.sum(-1)


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, Wh * Ww, C); H and W multiples of the window."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window[0], window[0], width // window[1], window[1], channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], channels)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    channels = windows.shape[-1]
    x = windows.view(-1, height // window[0], width // window[1], window[0], window[1], channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias, through SDPA."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def reset_buffers(self) -> None:
        """Recompute the non-persistent index (a model materialised from the meta device lacks it)."""
        self.relative_position_index.copy_(relative_position_index(self.window))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: additive (nW, N, N) or None. Returns (B * nW, N, C)."""
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, heads, N, head_dim)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask[None, :, None]).expand(windows // num_windows, -1, -1, -1, -1)
            bias = bias.reshape(windows, self.num_heads, tokens, tokens)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x.transpose(1, 2)  # (B * nW, N, heads, head_dim)
        if torch.compiler.is_exporting():  # the ONNX exporter's decomposed attention is not token-major
            x = x.clone(memory_format=torch.contiguous_format)
        return self.proj(x.reshape(windows, tokens, channels))


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP with pre-norm residuals. Supports the transformers
    gradient-checkpointing switch (``gradient_checkpointing`` and ``_gradient_checkpointing_func``,
    the contract of ``GradientCheckpointingLayer``) without importing transformers."""

    gradient_checkpointing = False

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], shift: tuple[int, int] = (0, 0),
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads=num_heads, window=window, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._gradient_checkpointing_func = checkpoint

    def shift_mask(self, height: int, width: int, device) -> torch.Tensor | None:
        """Swin's (nW, N, N) mask that keeps shifted windows from mixing wrapped-around regions."""
        if not any(self.shift):
            return None
        regions = torch.zeros(1, height, width, 1, device=device)
        label = 0
        for rows in (slice(0, -self.window[0]), slice(-self.window[0], -self.shift[0]), slice(-self.shift[0], None)):
            for columns in (slice(0, -self.window[1]), slice(-self.window[1], -self.shift[1]),
                            slice(-self.shift[1], None)):
                regions[:, rows, columns, :] = label
                label += 1
        labels = window_partition(regions, self.window).squeeze(-1)  # (nW, N)
        return (labels[:, None, :] != labels[:, :, None]).float() * -100.0

    def attention(self, x: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H, W, C) normed; groups: (H, W) long or None."""
        batch, height, width, channels = x.shape
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
            if groups is not None:
                groups = torch.roll(groups, shifts=(-self.shift[0], -self.shift[1]), dims=(0, 1))
        pad_h, pad_w = (-height) % self.window[0], (-width) % self.window[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        mask = self.shift_mask(padded_h, padded_w, x.device)
        if groups is not None:
            # Tokens only see their own group; padding is a group of its own.
            groups = F.pad(groups, (0, pad_w, 0, pad_h), value=PAD_GROUP)
            labels = window_partition(groups[None, :, :, None].float(), self.window).squeeze(-1)  # (nW, N)
            group_mask = (labels[:, None, :] != labels[:, :, None]).float() * MASKED
            mask = group_mask if mask is None else mask + group_mask
        windows = self.attn(window_partition(x, self.window), mask)
        x = window_reverse(windows, self.window, padded_h, padded_w)[:, :height, :width]
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x

    def _forward(self, x: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.norm1(x), groups))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, W, C); groups: (H, W) token groups or None. Returns (B, H, W, C)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(self._forward, x, groups, use_reentrant=False)
        return self._forward(x, groups)


class PatchMerging(nn.Module):
    """2x2 neighbours to one token, timm's channel order [(0, 0), (1, 0), (0, 1), (1, 1)] (row, column)."""

    def __init__(self, dim: int, out_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim)."""
        batch, height, width, channels = x.shape
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        height, width = x.shape[1:3]
        x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, window: tuple[int, int],
                 resolution: tuple[int, int], downsample: bool, shifted: bool, mlp_ratio: float, qkv_bias: bool,
                 drop_path: Sequence[float], eps: float):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim, eps) if downsample else nn.Identity()
        # As timm: a window no smaller than the feature map becomes the feature map, unshifted.
        window = tuple(min(w, r) for w, r in zip(window, resolution))
        shift = tuple(0 if r <= w else w // 2 for w, r in zip(window, resolution)) if shifted else (0, 0)
        self.blocks = nn.ModuleList(
            SwinBlock(out_dim, num_heads=num_heads, window=window, shift=shift if i % 2 else (0, 0),
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path[i], eps=eps)
            for i in range(depth))

    def forward(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x, groups)
        return x


class SwinEncoder(nn.Module):
    """Swin Transformer over (B, 3, H, W) images.

    Args:
        image_size: (H, W) the position embedding and window clamping are laid out for.
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, drop_path_rate:
            as Swin's. shifted_windows: the timm layout. absolute_position_embedding_size: (h, w) of
            the learned absolute position embedding (None: none), resized bicubically to the grid.
        cell_size: the masking cell in pixels; images are padded to whole cells.
    """

    def __init__(self, image_size: tuple[int, int], patch_size: int = 4, in_channels: int = 3, embed_dim: int = 128,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (4, 8, 16, 32),
                 window_size: Sequence[int] = (16, 16, 16, 8), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 shifted_windows: bool = False, absolute_position_embedding_size: tuple[int, int] | None = (56, 56),
                 drop_path_rate: float = 0.0, eps: float = 1e-5, cell_size: int = 32):
        super().__init__()
        self.patch_size, self.cell_size, self.image_size = patch_size, cell_size, tuple(image_size)
        self.padded_size = tuple(math.ceil(s / cell_size) * cell_size for s in image_size)
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.absolute_pos_embed = None
        if absolute_position_embedding_size is not None:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *absolute_position_embedding_size))
        dims = [embed_dim * 2**i for i in range(len(depths))]
        total = sum(depths)  # stochastic depth grows linearly over the blocks (plain Python: meta-device safe)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        resolution = [s // patch_size for s in self.padded_size]
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            if i:
                resolution = [(r + 1) // 2 for r in resolution]
            self.stages.append(SwinStage(dims[max(i - 1, 0)], out_dim=dims[i], depth=depth, num_heads=num_heads[i],
                                         window=(window_size[i], window_size[i]), resolution=tuple(resolution),
                                         downsample=i > 0, shifted=shifted_windows, mlp_ratio=mlp_ratio,
                                         qkv_bias=qkv_bias, drop_path=rates[sum(depths[:i]): sum(depths[:i + 1])],
                                         eps=eps))
        self.dims = dims
        self.strides = [patch_size * 2**i for i in range(len(depths))]

    def token_groups(self, cell_groups: torch.Tensor, stride: int) -> torch.Tensor:
        """(H / stride, W / stride) group of each token of the padded image at ``stride``: its cell's,
        or ``PAD_GROUP`` for tokens that cover padding only (they count as masked for everyone)."""
        repeat = self.cell_size // stride
        groups = cell_groups.repeat_interleave(repeat, 0).repeat_interleave(repeat, 1).clone()
        groups[-(-self.image_size[0] // stride):, :] = PAD_GROUP
        groups[:, -(-self.image_size[1] // stride):] = PAD_GROUP
        return groups

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding and norm of (B, 3, H, W), then zero tokens at the right and bottom up to whole
        masking cells: (B, H_pad / 4, W_pad / 4, C). The padding is added after the norm, as Swin pads its
        windows: a norm over an all-zero patch divides by sqrt(eps) and blows its gradient up ~300x."""
        height, width = pixel_values.shape[-2:]
        pixels = F.pad(pixel_values, (0, (-width) % self.patch_size, 0, (-height) % self.patch_size))
        x = self.patch_norm(self.patch_embed(pixels).permute(0, 2, 3, 1))
        padded_h, padded_w = (math.ceil(s / self.cell_size) * self.cell_size // self.patch_size
                              for s in (height, width))
        return F.pad(x, (0, 0, 0, padded_w - x.shape[2], 0, padded_h - x.shape[1]))

    def forward(self, pixel_values: torch.Tensor, cell_groups: torch.Tensor | None = None,
                after_stage=None) -> list[torch.Tensor]:
        """pixel_values: (B, 3, H, W); cell_groups: (H / cell, W / cell) long group (0 or 1) per masking
        cell of the padded image, or None; after_stage: optional
        ``f(stage_index, x, groups) -> x`` run on each stage's output (B, H_s, W_s, C_s) before the next
        stage, e.g. Cross-View Attention. Returns per-stage (B, H_s, W_s, C_s)."""
        x = self.embed(pixel_values)  # (B, H/4, W/4, C) of the padded image
        if self.absolute_pos_embed is not None:  # after the patch norm, as the official encoder
            position = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic", align_corners=False)
            x = x + position.permute(0, 2, 3, 1)
        outputs = []
        for index, (stage, stride) in enumerate(zip(self.stages, self.strides)):
            groups = None if cell_groups is None else self.token_groups(cell_groups, stride)
            x = stage(x, groups)
            if after_stage is not None:
                x = after_stage(index, x, groups)
            outputs.append(x)
        return outputs


def timm_checkpoint_filter(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """timm ``SwinTransformer`` weights to :class:`SwinEncoder` names. Pure: returns the encoder's
    state dict and the rest (timm's final ``norm``; the classifier ``head`` is dropped)."""
    encoder, rest = {}, {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            continue
        if key.startswith("norm."):
            rest[key] = value
        elif key.startswith("patch_embed.proj."):
            encoder["patch_embed." + key[len("patch_embed.proj."):]] = value
        elif key.startswith("patch_embed.norm."):
            encoder["patch_norm." + key[len("patch_embed.norm."):]] = value
        elif key.startswith("layers."):
            encoder["stages." + key[len("layers."):]] = value
        else:
            rest[key] = value
    return encoder, rest
