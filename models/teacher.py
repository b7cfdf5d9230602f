"""The VideoMAEv2 teacher: preprocess frames, run the ViT, return its last-block tokens.

The ViT matches OpenGVLab/VideoMAEv2 `models/modeling_finetune.py` (VisionTransformer with
qkv_bias=True, LayerNorm eps 1e-6, no layer scale) up to the output of the last block; the
classifier head, pooling and its norm are not built. Keys follow the official state dict so
the official checkpoints load unchanged (see models/teacher_weights.py).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tsa.configs.schema import ConfigError, Geometry, TeacherConfig
from tsa.models.teacher_weights import (
    TeacherCheckpointError,
    check_state_dict,
    read_state_dict,
    weights_sha256,
    write_state_dict,
)

__all__ = [
    "VideoMAEv2", "preprocess_frames", "load_teacher", "save_random_checkpoint", "teacher_features",
    "weights_sha256", "sinusoid_table", "resize_pos_table", "TeacherCheckpointError",
    "IMAGENET_MEAN", "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6
K710_CLASSES = 710  # head size of the official K710 checkpoints (written by save_random_checkpoint)


# ----------------------------------------------------------------------------- position table

def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """[num_positions, dim] float64: the 1-D sin/cos table of VideoMAEv2 over flat positions.

    Column j uses frequency 10000^(-2*(j//2)/dim); even columns take sin, odd columns cos.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table


def resize_pos_table(table: torch.Tensor, src_grid: tuple[int, int, int],
                     dst_grid: tuple[int, int, int]) -> torch.Tensor:
    """[Ts*Hs*Ws, C] -> [Td*Hd*Wd, C], rows in (t, h, w) row-major order.

    Bicubic over (h, w) per time slot, then linear over t (align_corners=False for both).
    """
    ts, hs, ws = src_grid
    td, hd, wd = dst_grid
    c = table.shape[-1]
    if table.shape[0] != ts * hs * ws:
        raise ValueError(f"position table has {table.shape[0]} rows, grid {src_grid} needs {ts * hs * ws}")
    x = table.reshape(ts, hs, ws, c).permute(0, 3, 1, 2)  # [Ts, C, Hs, Ws]
    x = F.interpolate(x, size=(hd, wd), mode="bicubic", align_corners=False)  # [Ts, C, Hd, Wd]
    x = x.permute(1, 2, 3, 0).reshape(1, c * hd * wd, ts)  # [1, C*Hd*Wd, Ts]
    x = F.interpolate(x, size=td, mode="linear", align_corners=False)  # [1, C*Hd*Wd, Td]
    return x.reshape(c, hd, wd, td).permute(3, 1, 2, 0).reshape(td * hd * wd, c)


# ----------------------------------------------------------------------------- the ViT

class Attention(nn.Module):
    """Multi-head self-attention with VideoMAEv2's biases: q and v learned, k fixed at zero."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N, C]."""
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim**-0.5, as the original
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, tubelet: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=tubelet, stride=tubelet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B, N, dim], tokens in (t, h, w) row-major order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VideoMAEv2(nn.Module):
    """VideoMAEv2 ViT encoder: [B, 3, T, H, W] normalised frames -> [B, N, dim] last-block tokens.

    (T, H, W) is `geometry.teacher_input`, N = prod(`geometry.teacher_grid`). The fixed sinusoid
    table of `teacher_cfg.pos_grid` is resized to the token grid once, at construction.
    """

    def __init__(self, teacher_cfg: TeacherConfig, geometry: Geometry):
        super().__init__()
        dim, heads = teacher_cfg.dim, teacher_cfg.heads
        if dim <= 0 or heads <= 0 or dim % heads:
            raise ConfigError(f"models.teacher.dim={dim} must be a positive multiple of models.teacher.heads={heads}")
        if len(teacher_cfg.pos_grid) != 3 or min(teacher_cfg.pos_grid) < 1:
            raise ConfigError(f"models.teacher.pos_grid={teacher_cfg.pos_grid}: expected three positive sizes [T, H, W]")
        if len(geometry.tubelet) != 3:
            raise ConfigError(f"geometry.tubelet={geometry.tubelet}: expected [Pt, Ph, Pw]")
        self.dim = dim
        self.input_size = tuple(geometry.teacher_input)
        self.grid = tuple(geometry.teacher_grid)
        self.patch_embed = PatchEmbed(dim, tuple(geometry.tubelet))
        self.blocks = nn.ModuleList(Block(dim, heads, teacher_cfg.mlp_ratio) for _ in range(teacher_cfg.depth))
        pos_grid = tuple(teacher_cfg.pos_grid)
        table = resize_pos_table(sinusoid_table(math.prod(pos_grid), dim), pos_grid, self.grid)
        self.register_buffer("pos_embed", table.float()[None], persistent=False)  # [1, N, dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B, N, dim]."""
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"teacher input must be [B, 3, {', '.join(map(str, self.input_size))}] "
                             f"(geometry.teacher_input), got {list(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return x


# ----------------------------------------------------------------------------- preprocessing

def preprocess_frames(frames: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded clip -> (pixels01, normalized), both [B, 3, T'-1, H/s, W/s] float32.

    `frames`: uint8 [B, T', H, W, 3] (decord's layout) or float [B, 3, T', H, W] in [0, 1], with
    (T', H, W) = (geometry.num_frames, height, width). Frame 0 is dropped; each remaining frame is
    resized by 1/geometry.teacher_scale (bicubic, antialiased) and clamped to [0, 1] (pixels01,
    the input of tsa_core.motion_map); `normalized` is pixels01 in ImageNet mean/std units.
    """
    t, h, w = geometry.num_frames, geometry.height, geometry.width
    if frames.dtype == torch.uint8:
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (t, h, w, 3):
            raise ValueError(f"uint8 frames must be [B, {t}, {h}, {w}, 3] (geometry num_frames, height, width), "
                             f"got {list(frames.shape)}")
        video = frames[:, 1:].permute(0, 1, 4, 2, 3).float().div_(255.0)  # [B, T'-1, 3, H, W]
    elif frames.is_floating_point():
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (3, t, h, w):
            raise ValueError(f"float frames must be [B, 3, {t}, {h}, {w}] (geometry num_frames, height, width), "
                             f"got {list(frames.shape)}")
        video = frames[:, :, 1:].transpose(1, 2).float()  # [B, T'-1, 3, H, W]
    else:
        raise ValueError(f"frames must be uint8 or floating point, got {frames.dtype}")
    b = video.shape[0]
    _, th, tw = geometry.teacher_input
    small = F.interpolate(video.reshape(b * (t - 1), 3, h, w), size=(th, tw), mode="bicubic",
                          align_corners=False, antialias=True).clamp_(0.0, 1.0)
    pixels01 = small.reshape(b, t - 1, 3, th, tw).transpose(1, 2).contiguous()  # [B, 3, T'-1, h, w]
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixels01.dtype, device=pixels01.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=pixels01.dtype, device=pixels01.device).view(1, 3, 1, 1, 1)
    return pixels01, (pixels01 - mean) / std


# ----------------------------------------------------------------------------- weights

def _expected_shapes(model: VideoMAEv2) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def load_teacher(teacher_cfg: TeacherConfig, geometry: Geometry, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build the ViT from config and load `teacher_cfg.checkpoint` (.pth or .safetensors, official keys);
    `models.teacher.kind` dinov2 / vjepa2: models/teacher_dinov2.py / teacher_vjepa2.py. Either maps [B, 3, T, h, w] -> [B, N, dim].

    Returns the model on `device` in `dtype`, eval mode, requires_grad False.
    """
    path = teacher_cfg.checkpoint
    if path == "tiny":
        raise TeacherCheckpointError("models.teacher.checkpoint is 'tiny': call models.tiny.resolve_tiny(cfg) "
                                     "first, or set it to a .pth/.safetensors file (kinds dinov2, vjepa2: a folder or hub id)")
    if teacher_cfg.kind == "dinov2":
        from tsa.models.teacher_dinov2 import load_dinov2

        return load_dinov2(teacher_cfg, geometry, device, dtype)
    if teacher_cfg.kind == "vjepa2":
        from tsa.models.teacher_vjepa2 import load_vjepa2

        return load_vjepa2(teacher_cfg, geometry, device, dtype)
    if teacher_cfg.kind != "videomaev2":
        raise ConfigError(f"models.teacher.kind={teacher_cfg.kind!r}: expected videomaev2, dinov2 or vjepa2")
    state = read_state_dict(path)
    model = VideoMAEv2(teacher_cfg, geometry)
    check_state_dict(state, _expected_shapes(model), path)
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def _random_init(model: VideoMAEv2, num_classes: int) -> dict[str, torch.Tensor]:
    """Official init (trunc normal std 0.02 for Linear weights), with small random biases and
    norm parameters so that every stored tensor affects the features (tests catch mix-ups)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.normal_(module.weight, mean=1.0, std=0.02)
                nn.init.normal_(module.bias, std=0.02)
            elif isinstance(module, Attention):
                nn.init.normal_(module.q_bias, std=0.02)
                nn.init.normal_(module.v_bias, std=0.02)
        state = dict(model.state_dict())
        # The official files also carry the pooling norm and the K710 classifier (ignored on load).
        state["fc_norm.weight"] = torch.ones(model.dim)
        state["fc_norm.bias"] = torch.zeros(model.dim)
        state["head.weight"] = nn.init.trunc_normal_(torch.empty(num_classes, model.dim), std=0.02)
        state["head.bias"] = torch.zeros(num_classes)
    return state


def save_random_checkpoint(teacher_cfg: TeacherConfig, geometry: Geometry, path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight teacher (fixed seed) in the official key layout.

    `.safetensors` holds the flat state dict; `.pth`/`.pt` holds {"module": state dict}.
    `teacher_cfg.checkpoint` is not read. The global RNG state is left unchanged.
    kind dinov2 / vjepa2: `path` is a folder written by Dinov2Model / VJEPA2Model.save_pretrained.
    """
    if teacher_cfg.kind == "dinov2":
        from tsa.models.teacher_dinov2 import save_random_dinov2

        return save_random_dinov2(teacher_cfg, geometry, path, seed)
    if teacher_cfg.kind == "vjepa2":
        from tsa.models.teacher_vjepa2 import save_random_vjepa2

        return save_random_vjepa2(teacher_cfg, geometry, path, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoMAEv2(teacher_cfg, geometry)
        state = _random_init(model, K710_CLASSES)
    return write_state_dict(state, path)


# ----------------------------------------------------------------------------- features

def teacher_features(model: nn.Module, normalized: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, h, w] ImageNet-normalised frames -> [B, N, dim] float32 tokens on the model's device.

    Runs under inference_mode; with bf16 weights on CUDA also under bf16 autocast (LayerNorm and
    softmax then accumulate in float32).
    """
    param = next(model.parameters())
    x = normalized.to(device=param.device, dtype=param.dtype)
    use_autocast = param.device.type == "cuda" and param.dtype == torch.bfloat16
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        return model(x).float()
