"""DINOv2 ViT encoder as used by Depth Anything V2 (Oquab et al. 2023, "DINOv2: Learning Robust
Visual Features without Supervision").

Built from timm's ViT `Block` (attention through `F.scaled_dot_product_attention`, `Mlp`,
`LayerScale`) with module names chosen so that the official `pretrained.*` checkpoint keys load
unchanged with `strict=True`. The details that decide numerical equality with the official code:
- the 37x37 position embedding is resized with bicubic `scale_factor=((h+0.1)/37, (w+0.1)/37)`
  (not `size=`): PyTorch then steps source coordinates by 1/scale_factor, a different function;
- `get_intermediate_layers` applies the FINAL norm to every selected block output;
- `mask_token` is a parameter (so the checkpoint loads) that inference never uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn


class SwiGLUFFN(nn.Module):
    """DINOv2's fused SwiGLU FFN (vitg): `w3(silu(a) * b)` with `a, b = w12(x).chunk(2)`.

    timm's SwiGLU names its layers differently (fc1_g/fc1_x/fc2), so the official `w12`/`w3`
    names are kept here. The hidden width follows DINOv2: 2/3 of `hidden_features`, rounded up
    to a multiple of 8 (6144 -> 4096 for vitg).
    """

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True, **_: object) -> None:
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


FFN_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFN}


class DinoVisionTransformer(nn.Module):
    """Plain DINOv2 ViT (no register tokens, no block chunks) returning selected block outputs.

    Input `(B, 3, H, W)` with H and W multiples of `patch_size`; outputs per selected block
    `(patch tokens (B, H/p * W/p, C), cls token (B, C))`, both after the final norm.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn: str = "mlp",
        mlp_ratio: float = 4.0,
        patch_size: int = 14,
        img_size: int = 518,
        in_chans: int = 3,
        init_values: float = 1.0,
    ) -> None:
        super().__init__()
        if ffn not in FFN_LAYERS:
            raise ValueError(f"unknown ffn {ffn!r}; expected one of {sorted(FFN_LAYERS)}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        grid = img_size // patch_size
        # strict_img_size=False: any multiple of the patch size is accepted (position embedding is resized)
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, strict_img_size=False
        )
        # registration order = the official state_dict order (cls_token, pos_embed, mask_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # only used by DINOv2 pre-training
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                init_values=init_values,
                norm_layer=norm_layer,
                act_layer=nn.GELU,
                mlp_layer=FFN_LAYERS[ffn],
            )
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int) -> torch.Tensor:
        """Position embedding `(1, 1 + num_patches, C)` for an input of `height x width` pixels.

        Follows the official recipe exactly: untouched for the native square grid, otherwise
        a float32 bicubic resize driven by `scale_factor` with DINOv2's +0.1 offset.
        """
        pos = self.pos_embed
        n_native = pos.shape[1] - 1
        if num_patches == n_native and height == width:
            return pos
        side = int(math.sqrt(n_native))
        gh, gw = height // self.patch_size, width // self.patch_size
        patch_pos = pos[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos,
            scale_factor=((gh + 0.1) / side, (gw + 0.1) / side),
            mode="bicubic",
            align_corners=False,
            antialias=False,
        )
        if patch_pos.shape[-2:] != (gh, gw):  # the +0.1 offset exists to make the floor land here
            raise RuntimeError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, expected {(gh, gw)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([pos[:, :1].float(), patch_pos], dim=1).to(pos.dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` -> `(B, 1 + H/p * W/p, C)`: cls + patch tokens plus position embedding."""
        _, _, height, width = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return tokens + self.interpolate_pos_encoding(tokens.shape[1] - 1, height, width).to(tokens.dtype)

    def forward(self, x: torch.Tensor, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Outputs of the blocks in `indices`, final-normed: `[(tokens (B, N, C), cls (B, C)), ...]`."""
        wanted = sorted(set(indices))
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self.blocks):
            raise ValueError(f"block indices {list(indices)} out of range for {len(self.blocks)} blocks")
        h = self.prepare_tokens(x)
        taken: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: wanted[-1] + 1]):  # later blocks cannot matter
            h = block(h)
            if i in wanted:
                taken[i] = h
        out = []
        for i in indices:
            normed = self.norm(taken[i])
            out.append((normed[:, 1:], normed[:, 0]))
        return out

    def get_intermediate_layers(
        self, x: torch.Tensor, n: Sequence[int], return_class_token: bool = False
    ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """The official API name (as called by Depth Anything V2), for comparison with it."""
        out = self(x, n)
        return out if return_class_token else [tokens for tokens, _ in out]
