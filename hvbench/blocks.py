"""Deterministic layers the hierarchical baselines share: BIVA's gated residual
conv block, a *stage* (a stack of them between two latent layers), and the
maps between a stage's feature map and its latent group.

The layout follows the official BIVA code (`biva-pytorch`), whose `VaeStage`,
`LvaeStage` and `BivaStage` differ only in how a stage infers its latents: the
deterministic stacks, the dense/spatial latent heads and the generative skip
connections are the same, so they live here once. Shapes are fixed when a model
is built (the task gives the input shape), so every block is told its input,
skip and output sizes instead of guessing them at run time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvbench.errors import UserError
from hvbench.latents import DiagonalGaussian, GaussianParams

Shape = tuple[int, int, int]  # (C, H, W)
Size = tuple[int, int]  # (H, W)
Activation = Literal["elu", "relu", "silu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU}
# activations whose backward reads their output, so they may overwrite their input
IN_PLACE = {"elu", "relu"}


@dataclass(frozen=True)
class StagesConfig:
    """A stack of stages, bottom (next to x) to top; stage i ends in latent group z_{i+1}.

    Each stage is `blocks` gated residual conv blocks of `filters` channels with
    kernel `kernels[i]`; its last block downsamples by `strides[i]`. Lists are
    per stage (same length as `latents`); `spatial` is one flag for every group
    or one per group (a spatial group has `latents[i]` channels at the stage's
    resolution, a dense group `latents[i]` units read from the whole map).
    """

    latents: tuple[int, ...] = (16, 8, 4)
    spatial: bool | tuple[bool, ...] = False
    filters: int = 16
    blocks: int = 1
    kernels: tuple[int, ...] = (3, 3, 3)
    strides: tuple[int, ...] = (2, 2, 2)
    activation: Activation = "elu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.latents)
        per_stage = {"kernels": self.kernels, "strides": self.strides}
        if not isinstance(self.spatial, bool):
            per_stage["spatial"] = self.spatial
        for name, values in per_stage.items():
            if len(values) != n:
                raise UserError(
                    f"model.{name} has {len(values)} entries {list(values)}, but model.latents "
                    f"{list(self.latents)} defines {n} stages: give one per stage"
                )
        rules = [
            ("latents", n > 0 and min(self.latents) > 0, "a non-empty list of positive sizes"),
            ("kernels", all(k % 2 == 1 for k in self.kernels), "odd sizes"),
            ("strides", all(s in (1, 2) for s in self.strides), "1 or 2"),
            ("filters", self.filters > 0, "positive"),
            ("blocks", self.blocks > 0, "positive"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise UserError(f"model.{name} must be {rule}, got {getattr(self, name)!r}")

    def is_spatial(self, stage: int) -> bool:
        return self.spatial if isinstance(self.spatial, bool) else self.spatial[stage]


@dataclass(frozen=True)
class StagePlan:
    """One stage's shapes: what its bottom-up stack reads, each block's output size, its map."""

    in_shape: Shape
    kernel: int
    sizes: tuple[Size, ...]  # output size of each block, bottom to top
    shape: Shape  # the stage's feature map, which its latent group is read from
    units: int
    spatial: bool

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.units, *self.shape[1:]) if self.spatial else (self.units,)

    @property
    def up_sizes(self) -> tuple[Size, ...]:
        """Output sizes of the mirrored (generative) stack: back to `in_shape`'s size."""
        return (*reversed(self.sizes[:-1]), self.in_shape[1:])


def plan_stages(cfg: StagesConfig, image: Shape) -> list[StagePlan]:
    plans, in_shape = [], image
    for i, units in enumerate(cfg.latents):
        size = in_shape[1:]
        last = tuple(-(-s // cfg.strides[i]) for s in size)  # 'same' padding rounds up
        sizes = (*[size] * (cfg.blocks - 1), last)
        shape = (cfg.filters, *last)
        plans.append(StagePlan(in_shape, cfg.kernels[i], sizes, shape, units, cfg.is_spatial(i)))
        in_shape = shape
    return plans


def _shrinks(size: Size, out: Size) -> bool:
    return all(o <= s for o, s in zip(out, size, strict=True))


def _stride(size: Size, out: Size) -> tuple[int, int]:
    """Per-axis factor between two map sizes; 'same' padding rounds the smaller one up."""
    if _shrinks(size, out):
        return tuple(-(-s // o) for s, o in zip(size, out, strict=True))
    if _shrinks(out, size):
        return tuple(-(-o // s) for s, o in zip(size, out, strict=True))
    raise ValueError(f"cannot resample a {size} map to {out}")


def resample_conv(in_ch: int, out_ch: int, kernel: int, size: Size, out: Size) -> nn.Module:
    """A k×k conv from a `size` map to an `out` map: 'same', strided down, or transposed up."""
    pad, stride = kernel // 2, _stride(size, out)
    if _shrinks(size, out):
        return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad)
    natural = ((s - 1) * st - 2 * pad + kernel for s, st in zip(size, stride, strict=True))
    extra = tuple(o - n for o, n in zip(out, natural, strict=True))
    return nn.ConvTranspose2d(
        in_ch, out_ch, kernel, stride=stride, padding=pad, output_padding=extra
    )


def shortcut(in_ch: int, out_ch: int, size: Size, out: Size) -> nn.Module:
    """The residual path: pooled down or repeated up to `out`, 1×1-projected if channels change."""
    layers: list[nn.Module] = []
    if out != size:
        layers.append(
            nn.AvgPool2d(3, _stride(size, out), padding=1, count_include_pad=False)
            if _shrinks(size, out)
            else nn.Upsample(size=out, mode="nearest")
        )
    if in_ch != out_ch:
        layers.append(nn.Conv2d(in_ch, out_ch, 1, bias=False))
    return nn.Sequential(*layers)


class Dropout(nn.Module):
    """Inverted dropout, `nn.Dropout`'s distribution drawn cheaply.

    On a GPU it is torch's fused dropout (one kernel). On a CPU every random number comes
    from one Mersenne Twister, one draw at a time: `bernoulli_` costs three uniform draws
    per element and even one fp32 uniform per element is a visible share of a small
    net's step, so the mask comes from `scaled_mask`'s random bits. Under `torch.compile`
    that mask is an opaque op of the graph: inductor draws no random numbers of its own
    (drawn per element, they cost more than the convolutions around them). The mask stays
    in x's dtype: a bool or uint8 mask inside inductor's fused kernels kept them from
    vectorizing.

    `mask(like)` draws the mask from a tensor that exists before x (a block passes its
    convolution's output): the mask then reads nothing x is made of, so inductor fuses the
    multiply into the kernel that makes x (one pass fewer than multiplying a stored x).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def mask(self, like: Tensor) -> Tensor | None:
        """The scaled mask for a tensor of like's size, dtype and layout; None where `forward`
        draws its own (evaluation draws nothing, a GPU fuses its draw)."""
        if not self.training or like.device.type != "cpu":
            return None
        return scaled_mask(like.detach(), self.p)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.training:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * (self.mask(x) if mask is None else mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@torch.library.custom_op("hvbench::scaled_mask", mutates_args=())
def scaled_mask(like: Tensor, p: float) -> Tensor:
    """1/keep where an element is kept and 0 where dropped (keep = 1 - p), in like's dtype,
    size and layout (its values are not read). For p = ½ one random bit per element
    (`_half_mask`); else the mask is read from random bytes, in memory order: 8 bits per
    element when keep is a multiple of 1/256, else 16 (keep rounded to a multiple of 2⁻¹⁶,
    as an fp32 uniform rounds it to 2⁻²⁴), compared with keep·2^bits."""
    keep = 1.0 - p
    if p == 0.5:
        return _half_mask(like)
    if (keep * 256).is_integer():
        values, threshold = _uniform_bits(like, torch.uint8), int(keep * 256)
    else:  # int16 runs from -2¹⁵: keep·2¹⁶ values lie below the threshold
        values = _uniform_bits(like, torch.int16)
        threshold = min(round(keep * 2**16), 2**16 - 1) - 2**15
    kept = torch.lt(values, threshold)  # like's layout
    # through uint8: torch casts bool to bf16 much slower than uint8
    return kept.view(torch.uint8).to(like.dtype).mul_(1.0 / keep)


INTEGERS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # by width in bytes


def _half_mask(like: Tensor) -> Tensor:
    """`scaled_mask` for p = ½: 2.0 or 0 with probability ½ each, from one random bit per
    element. 2.0 has a single bit set in bf16, fp16, fp32 and fp64 alike (the exponent's top
    bit), so the mask is a random bit shifted into that place and ANDed with it: two
    vectorised integer passes, and a 64th of a draw per element (an 8-bit mask draws eight
    times that, then compares, casts and scales). Row k of the mask (its memory viewed as 8
    rows) takes bit k of a row of random bytes: elements next to each other in memory take
    the same bit of different bytes, independent whatever the layout."""
    integers, two, shifts = _half_mask_constants(like.dtype, like.device)
    n = like.numel()
    width = -(-n // 8)
    bits = _random_bytes(width, like.device).to(integers)
    out = torch.empty_like(like, dtype=integers)
    flat = out.as_strided((n,), (1,))  # memory order: like is dense
    if n % 8 == 0:
        torch.bitwise_left_shift(bits, shifts, out=flat.view(8, width))
    else:
        flat.copy_(torch.bitwise_left_shift(bits, shifts).flatten()[:n])
    flat.bitwise_and_(two)
    return out.view(like.dtype)


@functools.cache
def _half_mask_constants(
    dtype: torch.dtype, device: torch.device
) -> tuple[torch.dtype, int, Tensor]:
    """For `_half_mask` in `dtype`: the integer type of its width, 2.0's bits in it, and the
    shift that moves bit k of a byte to 2.0's bit, for k = 0…7 (as a column)."""
    integers = INTEGERS[torch.finfo(dtype).bits // 8]
    two = torch.tensor(2.0, dtype=dtype).view(integers).item()
    place = two.bit_length() - 1
    shifts = torch.arange(place, place - 8, -1, dtype=integers, device=device)
    return integers, two, shifts[:, None]


def _random_bytes(count: int, device: torch.device) -> Tensor:
    """`count` uniform random bytes, drawn 64 bits at a time."""
    words = torch.empty(-(-count // 8), dtype=torch.int64, device=device)
    return words.random_(-(2**63), None).view(torch.uint8)[:count]


def _uniform_bits(like: Tensor, dtype: torch.dtype) -> Tensor:
    """Integers of `dtype` with every bit uniform, one per element of like, in its shape and
    layout, drawn 64 bits at a time in memory order: elements next to each other in memory
    are independent whatever the layout (like is dense, so flat in memory)."""
    out, n = torch.empty_like(like, dtype=dtype), like.numel()
    flat = out.as_strided((n,), (1,))
    if n * out.element_size() % 8 == 0:
        flat.view(torch.int64).random_(-(2**63), None)
    else:  # a last, partial word
        flat.copy_(_random_bytes(n * out.element_size(), like.device).view(dtype))
    return out


@scaled_mask.register_fake
def _scaled_mask_shape(like: Tensor, p: float) -> Tensor:
    return torch.empty_like(like)


class GatedResBlock(nn.Module):
    """BIVA's gated resnet: y = r(x) + a ⊙ σ(b), (a, b) = conv₂(act(conv₁(act x) + s(act skip))).

    The gate lets a block pass little at first and a deep stack train without
    normalisation; the optional skip input is how BIVA wires one path into
    another (bottom-up into top-down, a stage into the one below). Without a
    residual (the first block on an image or a latent projection) the input is
    used as it is, not activated.
    """

    def __init__(
        self,
        in_shape: Shape,
        filters: int,
        kernel: int,
        out: Size,
        *,
        skip_shape: Shape | None = None,
        residual: bool = True,
        activation: Activation = "elu",
        dropout: float = 0.0,
    ):
        super().__init__()
        channels, *size = in_shape
        size = tuple(size)
        self.act = ACTIVATIONS[activation]()
        # on conv₁'s output, which nothing else reads: in place, its backward reads its output
        self.act_h = ACTIVATIONS[activation](inplace=activation in IN_PLACE)
        self.conv1 = nn.Conv2d(channels, filters, kernel, padding=kernel // 2)
        self.skip = None
        if skip_shape is not None:
            skip_size = skip_shape[1:]
            skip_kernel = 1 if skip_size == size else kernel
            self.skip = resample_conv(skip_shape[0], filters, skip_kernel, skip_size, size)
        self.dropout = Dropout(dropout) if dropout > 0 else None
        self.conv2 = resample_conv(filters, 2 * filters, kernel, size, out)
        self.shortcut = shortcut(channels, filters, size, out) if residual else None
        self.out_shape: Shape = (filters, *out)

    def forward(
        self, x: Tensor, skip: Tensor | None = None, *, activated_skip: Tensor | None = None
    ) -> Tensor:
        """`activated_skip`: act(skip) when the caller has it (a stack that feeds one skip to
        several blocks activates it once)."""
        h = self.conv1(self.act(x) if self.shortcut is not None else x)
        # drawn from conv₁'s output, before the sum and the activation make h (see Dropout)
        mask = self.dropout.mask(h) if self.dropout is not None else None
        if self.skip is not None:
            h = h + self.skip(self.act(skip) if activated_skip is None else activated_skip)
        h = self.act_h(h)
        y = _gate(self.conv2(h if self.dropout is None else self.dropout(h, mask)))
        return y + self.shortcut(x) if self.shortcut is not None else y


def _gate(h: Tensor) -> Tensor:
    """a ⊙ σ(b) for (a, b) = h's two halves of channels. In NCHW that is `F.glu`, one op forward
    and one backward (twice as fast on a CPU as the three ops and the gradients' `cat`);
    torch's channels-last GLU is slower than the three ops, which it keeps."""
    if h.is_contiguous():
        return F.glu(h, dim=1)
    a, b = h.chunk(2, dim=1)
    return a * torch.sigmoid(b)


class ConvStack(nn.Module):
    """One stage's deterministic path: gated blocks in a row, block j reading skip j if given.

    Returns every block's output too: the generative stack of the stage above
    hands them to the stage below as skips (the official code's pairing:
    block j feeds block j). A skip given to several blocks in a row (BIVA's and the
    stacked VAE's inference stacks) is activated once for all of them.
    """

    def __init__(
        self,
        in_shape: Shape,
        filters: int,
        kernel: int,
        sizes: Sequence[Size],
        *,
        skip_shapes: Sequence[Shape] | None = None,
        first_residual: bool = True,
        activation: Activation = "elu",
        dropout: float = 0.0,
    ):
        super().__init__()
        blocks, shape = [], in_shape
        for j, out in enumerate(sizes):
            block = GatedResBlock(
                shape,
                filters,
                kernel,
                out,
                skip_shape=skip_shapes[j] if skip_shapes else None,
                residual=first_residual or j > 0,
                activation=activation,
                dropout=dropout,
            )
            blocks.append(block)
            shape = block.out_shape
        self.blocks = nn.ModuleList(blocks)
        self.hidden_shapes: list[Shape] = [b.out_shape for b in blocks]
        self.out_shape = shape

    def forward(
        self, x: Tensor, skips: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        hidden, activated = [], None
        for j, block in enumerate(self.blocks):
            if skips is not None and (j == 0 or skips[j] is not skips[j - 1]):
                activated = block.act(skips[j])
            x = block(x, activated_skip=activated)
            hidden.append(x)
        return x, hidden


class LatentParams(nn.Module):
    """act → (flatten for a dense group) → (μ, log σ): a latent group read from a stage's map.

    A dense group reads the whole map through one linear layer, as the official
    BIVA code does; a spatial one is a 1×1 conv at the map's resolution.
    """

    def __init__(self, shape: Shape, units: int, spatial: bool, activation: Activation):
        super().__init__()
        self.act = ACTIVATIONS[activation]()
        self.spatial = spatial
        features = shape[0] if spatial else shape[0] * shape[1] * shape[2]
        self.params = GaussianParams(features, units, spatial)

    def forward(self, h: Tensor) -> DiagonalGaussian:
        h = self.act(h)
        if self.spatial:
            return self.params(h)
        if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
            return self._channels_last_params(h)
        return self.params(h.flatten(1))

    def _channels_last_params(self, h: Tensor) -> DiagonalGaussian:
        """The dense group read from a channels-last map in its memory order, with the weight's
        columns put in that order: flattening the map in (C, H, W) order copied it
        transposed, forward and backward. The weight is cast to autocast's dtype (the cast
        autocast makes anyway) before it is permuted, so the permuted copy and its gradient
        are in that dtype: permuted in fp32 first, eager paid for an fp32 copy and then the
        cast (AMX CPU, 2 threads: one 64×14×14 → 48-unit group alone, bf16 forward and
        backward, 6.8 ms against 4.6; an eager bf16 BIVA step's casts 58 → 52 ms; under
        `torch.compile` both fuse into one pass). Same parameters, same function (the
        product's terms summed in another order: rounding only)."""
        proj = self.params.proj
        batch, channels, height, width = h.shape
        weight = proj.weight.to(compute_dtype(h.device.type, proj.weight.dtype))
        weight = weight.view(-1, channels, height, width).permute(0, 2, 3, 1)
        flat = h.permute(0, 2, 3, 1).reshape(batch, -1)  # a view: the map's memory order
        out = F.linear(flat, weight.reshape(proj.out_features, -1), proj.bias)
        return DiagonalGaussian.from_params(out, dim=1)


class LatentMLP(nn.Sequential):
    """A small Sequential that runs in fp32 under autocast: the layers that produce a latent
    group's (μ, log σ) or read its samples. bf16 keeps 8 mantissa bits, so near |z| = 2 it
    rounds in steps of 2⁻⁷ ≈ 0.008, coarser than a tight posterior's σ
    (results/bf16-vs-fp32.md measures what that cost a DAG-VAE). They are tiny next to the
    convolutions. Parameter names are nn.Sequential's."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def compute_dtype(device: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype activations run in on `device`: autocast's where it is on, else `dtype`. A
    stack's input cast to it once runs in it throughout; an fp32 input would make every
    residual sum fp32 and every activation after it a cast and an fp32 pass."""
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else dtype


class LatentToFeatures(nn.Module):
    """A latent sample back to a stage-shaped map: linear + reshape (dense), 1×1 conv (spatial).

    The projection runs in fp32 (see `LatentMLP`); its output is cast once to the autocast
    dtype, so the stack it feeds runs in that dtype: left in fp32, it made each residual sum
    fp32 and every activation and conv input after it a cast and an fp32 pass. In the same
    copy the map takes `memory_format` (`train.channels_last` sets it), the layout of the
    convolutions it feeds.
    """

    memory_format = torch.contiguous_format

    def __init__(self, units: int, shape: Shape, spatial: bool):
        super().__init__()
        self.shape = shape
        self.proj = (
            nn.Conv2d(units, shape[0], 1)
            if spatial
            else nn.Linear(units, shape[0] * shape[1] * shape[2])
        )

    def forward(self, z: Tensor) -> Tensor:
        device = z.device.type
        with torch.autocast(device, enabled=False):  # see LatentMLP: z stays unrounded
            if self.memory_format == torch.channels_last and isinstance(self.proj, nn.Linear):
                h = self._channels_last_linear(z.float())
            else:
                h = self.proj(z.float()).view(-1, *self.shape)
        return h.to(compute_dtype(device, h.dtype), memory_format=self.memory_format)

    def _channels_last_linear(self, z: Tensor) -> Tensor:
        """The dense projection with its bias added in channels-last order: the bias gradient
        is then a sum over the batch of rows contiguous in memory. Added by `nn.Linear` in
        the (C, H, W) order of its parameter, it was a gather across the channels-last
        gradient that inductor compiles to a scalar loop (2% of a compiled bf16 step of the
        paper VAE). Same parameters, same function; the bias is added after the product
        instead of inside it (rounding only)."""
        channels, height, width = self.shape
        bias = self.proj.bias.view(channels, height, width).permute(1, 2, 0).contiguous()
        h = F.linear(z, self.proj.weight).view(-1, channels, height, width)
        return (h.permute(0, 2, 3, 1) + bias).permute(0, 3, 1, 2)


class GenerativeStage(nn.Module):
    """Top-down half of a stage: its latent sample → map → mirrored stack (reading the skips of
    the stage above) → the map the stage below reads."""

    def __init__(
        self,
        plan: StagePlan,
        units: int,
        skip_shapes: Sequence[Shape] | None,
        activation: Activation,
        dropout: float,
    ):
        super().__init__()
        self.features = LatentToFeatures(units, plan.shape, plan.spatial)
        self.stack = ConvStack(
            plan.shape,
            plan.shape[0],
            plan.kernel,
            plan.up_sizes,
            skip_shapes=skip_shapes,
            first_residual=False,
            activation=activation,
            dropout=dropout,
        )

    def forward(self, z: Tensor, skips: Sequence[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        return self.stack(self.features(z), skips)


def generative_stages(
    plans: Sequence[StagePlan], units: Sequence[int], activation: Activation, dropout: float
) -> nn.ModuleList:
    """Every stage's top-down half, indexed bottom to top (like the plans); each reads the
    hidden maps of the stage above as skips. `units[i]`: what stage i's latent sample holds."""
    stages: list[GenerativeStage] = []
    skips = None
    for plan, n in zip(reversed(plans), reversed(units), strict=True):
        stages.append(GenerativeStage(plan, n, skips, activation, dropout))
        skips = stages[-1].stack.hidden_shapes
    return nn.ModuleList(reversed(stages))


def output_layer(filters: int, out_channels: int, activation: Activation) -> nn.Module:
    """act → 1×1 conv to the likelihood head's parameters (the official code's projection)."""
    return nn.Sequential(ACTIVATIONS[activation](), nn.Conv2d(filters, out_channels, 1))
