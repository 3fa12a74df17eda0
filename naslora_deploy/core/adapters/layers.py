"""Adapter layers that wrap SAM's ``attn.qkv`` linear layer.

``AdaptedQKV`` is the trainable form: its ``base_layer`` is the frozen qkv
``nn.Linear``, and one ``LowRankAdapter`` per adapted projection (q, k, v) holds
W_e (``lora_A``), the searchable cell and W_d (``lora_B``). ``FusedQKV`` is the
exact deployment form made by ``AdaptedQKV.fused()`` for ``merge(mode="fused")``: the same computation with
the cell already collapsed into one fixed kernel.

The qkv layer sees (B, H, W, C) token grids (64x64 in global blocks, windows in
windowed blocks), so the cell can treat the rank-r code as a (B, r, H, W) image.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from naslora_deploy.core.adapters.config import TARGETS, AdapterConfig
from naslora_deploy.core.adapters.ops import (
    OP_SPECS,
    DepthwisePointwise,
    build_op,
    common_span,
    dilate,
    embed_centered,
    fold_darts_op,
    linear_op_kernel,
    op_scales,
)

CELL_FORWARDS = ("kernel", "naive")


class LowRankAdapter(nn.Module):
    """One projection's adapter: ``h += W_d cell(W_e x)``.

    The cell acts on the channels selected by ``pc_mask`` (all of them for
    ``nas_lora``); the others pass straight through, as in NAS-PC-LoRA.
    Plain LoRA has no cell and no ``alpha``. The ``scaled`` cell form adds a
    fixed ``op_scale`` (N,) buffer multiplying each candidate; the ``darts`` form
    builds DARTS' non-linear primitives, which only run op by op (``naive_cell``).
    """

    follows_run_mode = True  # trained: it and its submodules take the run's mode (``model.modes``)

    def __init__(self, in_features: int, out_features: int, config: AdapterConfig) -> None:
        super().__init__()
        rank = config.rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.op_names: Tuple[str, ...] = tuple(config.ops) if config.has_cell else ()
        if config.has_cell:
            channels = config.cell_channels
            self.alpha = nn.Parameter(torch.randn(len(self.op_names)) * config.alpha_init_std)
            self.ops = nn.ModuleDict(
                {name: build_op(name, channels, config.cell_form) for name in self.op_names}
            )
            if config.cell_form == "scaled":
                self.register_buffer("op_scale", op_scales(self.op_names, self.ops))
            mask = torch.zeros(rank)
            mask[:channels] = 1.0
            self.register_buffer("pc_mask", mask)
        self.span = common_span(self.op_names)
        self.linear_cell = config.linear_cell
        if config.has_cell:
            if self.linear_cell:
                self._register_kernel_bases(channels)
            self._refresh_mask_tensors()

    def _register_kernel_bases(self, channels: int) -> None:
        """Constant tensors that turn the kernel build into a few einsums (not persisted).

        ``_tap_place`` (J, T, span*span): for conv candidate j, a 0/1 map from its
        k*k taps (rows offset within the T = sum of k*k taps of all conv candidates)
        to dilated, centred positions in the common span. ``_constant_basis``
        (N, c, c, span*span): the 0/1 kernels of the weight-free linear candidates.
        """
        span = self.span
        self.conv_names = [n for n in self.op_names if isinstance(self.ops[n], DepthwisePointwise)]
        tap_counts = [OP_SPECS[n].kernel ** 2 for n in self.conv_names]
        place = torch.zeros(len(self.conv_names), sum(tap_counts), span * span)
        offset = 0
        for j, (name, count) in enumerate(zip(self.conv_names, tap_counts)):
            spec = OP_SPECS[name]
            taps = torch.eye(count).reshape(-1, spec.kernel, spec.kernel)  # one tap per row
            place[j, offset : offset + count] = embed_centered(dilate(taps, spec.dilation), span).flatten(1)
            offset += count
        self.register_buffer("_tap_place", place, persistent=False)
        self.constant_names = [n for n in self.op_names if n in ("avg_pool_3x3", "skip_connect")]
        like = torch.zeros(())
        # basis entries are 0/1; avg pool's 1/9 is applied at use, in the weights' own precision
        basis = [
            (linear_op_kernel(n, self.ops[n], channels, span, like).flatten(2) != 0).float()
            for n in self.constant_names
        ]
        self.constant_scales = [1.0 / 9.0 if n == "avg_pool_3x3" else 1.0 for n in self.constant_names]
        self.register_buffer(
            "_constant_basis",
            torch.stack(basis) if basis else torch.zeros(0, channels, channels, span * span),
            persistent=False,
        )
        self.constant_index = [self.op_names.index(n) for n in self.constant_names]
        self.conv_index = [self.op_names.index(n) for n in self.conv_names]
        self.max_pool_index = self.op_names.index("max_pool_3x3") if "max_pool_3x3" in self.op_names else None

    def _refresh_mask_tensors(self) -> None:
        """Selection matrix, pass-through identity and max-pool mask, derived from ``pc_mask``."""
        inside, passing = self.cell_channel_index()
        rank, span = self.pc_mask.numel(), self.span
        eye = torch.eye(rank, dtype=self.pc_mask.dtype, device=self.pc_mask.device)
        passthrough = torch.zeros(
            rank, rank, span * span, dtype=self.pc_mask.dtype, device=self.pc_mask.device
        )
        passthrough[passing, passing, (span // 2) * span + span // 2] = 1.0
        self.register_buffer("_select", eye[:, inside].contiguous(), persistent=False)
        self.register_buffer("_passthrough", passthrough, persistent=False)
        self.mask_key = tuple(
            bool(v) for v in (self.pc_mask > 0.5).tolist()
        )  # host copy: no device sync later
        self.full_cell = all(self.mask_key)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        if self.has_cell:
            self._refresh_mask_tensors()  # a loaded pc_mask may select other channels

    @property
    def has_cell(self) -> bool:
        """Whether this adapter has a searchable cell."""
        return bool(self.op_names)

    @property
    def has_max_pool(self) -> bool:
        """Whether max pooling (the one non-linear candidate) is in the cell."""
        return "max_pool_3x3" in self.op_names

    def cell_channel_index(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Indices of the channels that go through the cell, and of those that pass."""
        selected = self.pc_mask > 0.5
        return selected.nonzero()[:, 0], (~selected).nonzero()[:, 0]

    def op_weights(self) -> torch.Tensor:
        """softmax(alpha): the mixing weight of each candidate (the searched architecture)."""
        return torch.softmax(self.alpha, dim=0)

    def mixing_weights(self) -> torch.Tensor:
        """What multiplies each candidate's output: softmax(alpha), times ``op_scale`` in the scaled form."""
        weights = self.op_weights()
        scale = getattr(self, "op_scale", None)
        return weights if scale is None else weights * scale.to(weights.dtype)

    def cell_kernel(self) -> torch.Tensor:
        """The (r, r, span, span) kernel of the whole cell without max pooling.

        It is the softmax-weighted sum of every linear candidate's kernel on the
        cell channels, plus the identity on the pass-through channels. Linear
        cell forms only (``linear``, ``scaled``).
        """
        self._require_linear("a single cell kernel")
        return stacked_cell_kernels([self])[0]

    def _require_linear(self, what: str) -> None:
        if not self.linear_cell:
            raise ValueError(f"{what} exists only for linear cells; this cell's form is darts (non-linear)")

    def max_pool_weight(self) -> torch.Tensor:
        """(r,) per-channel weight of the max-pool branch (zero off the cell channels)."""
        self._require_linear("a max-pool branch weight")
        return stacked_cell_kernels([self])[1]

    def spatial_weight(self) -> float:
        """Softmax weight on the spatial candidates (convs, pools): what a dense fold only approximates."""
        if not self.has_cell:
            return 0.0
        weights = self.op_weights().detach()
        return float(sum(weights[i] for i, name in enumerate(self.op_names) if OP_SPECS[name].spatial))

    def constant_response_fold(self) -> torch.Tensor:
        """(r, r) float64: the cell's output for a spatially constant code, away from borders."""
        self._require_linear("a constant-input response fold")
        kernel = self.cell_kernel().double()
        return kernel.sum(dim=(-1, -2)) + torch.diag(self.max_pool_weight().double())

    def naive_cell(self, code: torch.Tensor) -> torch.Tensor:
        """Reference cell on a (B, r, H, W) code: the weighted sum of the separate ops."""
        weights = self.mixing_weights()
        inside, passing = self.cell_channel_index()
        selected = code[:, inside]
        mixed = sum(weights[i] * self.ops[name](selected) for i, name in enumerate(self.op_names))
        out = torch.empty_like(code)
        out[:, inside] = mixed
        out[:, passing] = code[:, passing]
        return out


def stacked_cell_kernels(adapters: Sequence[LowRankAdapter]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The cells of G same-config adapters at once: (G*r, r, span, span) kernels and (G*r,) max-pool weights.

    One einsum builds every conv candidate's taps for all G adapters, one more
    weights and sums them, instead of a handful of tiny ops per candidate and
    adapter: the build is a constant cost per layer and step, paid in op launches.
    Adapters whose ``pc_mask`` differs (possible only by loading one) are built
    one by one.
    """
    first = adapters[0]
    if any(a.mask_key != first.mask_key for a in adapters[1:]):
        built = [stacked_cell_kernels([a]) for a in adapters]
        return torch.cat([k for k, _ in built]), torch.cat([m for _, m in built])
    rank, span, groups = first.pc_mask.numel(), first.span, len(adapters)
    weights = torch.stack([a.mixing_weights() for a in adapters])  # (G, N)
    scales = weights.new_tensor(first.constant_scales)
    mixed = torch.einsum("gn,ncds->gcds", weights[:, first.constant_index] * scales, first._constant_basis)
    if first.conv_names:
        convs = [a.ops[name] for a in adapters for name in a.conv_names]
        channels = convs[0].pointwise.weight.shape[0]
        taps = torch.cat([op.depthwise.weight.reshape(channels, -1) for op in convs], dim=1)  # (c, G*T)
        pointwise = torch.stack(
            [op.pointwise.weight.reshape(channels, channels) for op in convs]
        )  # (G*J, c, c)
        placed = torch.einsum("cgt,jts->gjcs", taps.unflatten(1, (groups, -1)), first._tap_place)
        conv_weights = weights[:, first.conv_index]  # (G, J)
        mixed = mixed + torch.einsum(
            "gj,gjdc,gjcs->gdcs", conv_weights, pointwise.unflatten(0, (groups, -1)), placed
        )
    if not first.full_cell:
        mixed = torch.einsum("oc,gcds,id->gois", first._select, mixed, first._select) + first._passthrough
    kernel = mixed.reshape(groups * rank, rank, span, span)
    if first.max_pool_index is None:
        return kernel, weights.new_zeros(groups * rank)
    inside = (first.pc_mask > 0.5).to(weights.dtype)
    max_pool = weights[:, first.max_pool_index : first.max_pool_index + 1] * inside  # (G, r)
    return kernel, max_pool.reshape(-1)


def mixed_cell(
    code: torch.Tensor, kernel: torch.Tensor, max_pool_weight: torch.Tensor, groups: int, max_pool: bool
) -> torch.Tensor:
    """Apply the collapsed cell to a (B, H, W, G*r) code, G groups of r channels.

    One grouped convolution (groups = adapted projections) plus, where max pooling
    is a candidate (``max_pool``, known on the host so that no device sync is needed),
    its weighted max-pool branch.
    """
    image = code.permute(0, 3, 1, 2)
    out = F.conv2d(image, kernel, padding=kernel.shape[-1] // 2, groups=groups)
    if max_pool:
        out = out + F.max_pool2d(image, 3, stride=1, padding=1) * max_pool_weight.view(1, -1, 1, 1)
    return out.permute(0, 2, 3, 1)


def _as_grid(x: torch.Tensor, grid: Optional[Tuple[int, int]]) -> torch.Tensor:
    """(B', N, C) token rows -> (B', gh, gw, C); a (B, H, W, C) grid (``grid`` None) passes."""
    return x if grid is None else x.reshape(-1, grid[0], grid[1], x.shape[-1])


class AdaptedQKV(nn.Module):
    """An attention block's qkv ``nn.Linear`` (``base_layer``) plus LoRA / NAS-LoRA adapters.

    ``columns``: the output columns of q, k and v (default: SAM ViT's [q | k | v]
    thirds; TinyViT interleaves them per head). ``token_grid``: where the layer
    sees (B', N, C) token rows (TinyViT's windows), the (gh, gw) grid they form,
    so the cell can run on the token map; None for SAM ViT's (B, H, W, C) input.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        config: AdapterConfig,
        columns: Optional[Sequence[torch.Tensor]] = None,
        token_grid: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        out = base_layer.out_features
        if columns is None:
            if out % 3:
                raise ValueError(f"qkv layer has {out} outputs, not a multiple of 3")
            columns = torch.arange(out).view(3, out // 3).unbind(0)
        self.base_layer = base_layer
        self.config = config
        self.token_grid = token_grid
        chosen = [columns[TARGETS.index(t)] for t in config.targets]
        self.adapters = nn.ModuleDict(
            {
                t: LowRankAdapter(base_layer.in_features, len(c), config)
                for t, c in zip(config.targets, chosen)
            }
        )
        target_columns = torch.cat(chosen)
        self.register_buffer("target_columns", target_columns, persistent=False)
        self.cell_forward = "kernel"
        self.disabled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.disabled:
            return out
        # W_d's rows placed at their qkv columns: a plain add instead of a scatter into TinyViT's
        # interleaved columns, whose gather backward cost a third of the adapter's time (bf16, CPU)
        _, cell_out = self.codes(x)
        delta = F.linear(cell_out.flatten(-2), self.placed_lora_B())
        return out + delta.reshape(*x.shape[:-1], delta.shape[-1])

    def placed_lora_B(self) -> torch.Tensor:
        """The (3*dim, T*r) W_d of every adapter, rows at their qkv output columns, zero elsewhere."""
        block_b = torch.block_diag(*[a.lora_B for a in self.adapters.values()])
        placed = block_b.new_zeros(self.base_layer.out_features, block_b.shape[1])
        return placed.index_copy(0, self.target_columns, block_b)

    def codes(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (B, H, W, T, r) low-rank codes before and after the cell."""
        adapters = list(self.adapters.values())
        lora_A = torch.cat([a.lora_A for a in adapters])
        code = F.linear(_as_grid(x, self.token_grid), lora_A)
        groups = len(adapters)
        if not adapters[0].has_cell:
            out = code
        elif self.cell_forward == "naive" or not adapters[0].linear_cell:
            image = code.permute(0, 3, 1, 2).unflatten(1, (groups, -1))
            out = torch.cat([a.naive_cell(image[:, g]) for g, a in enumerate(adapters)], 1)
            out = out.permute(0, 2, 3, 1)
        else:
            kernel, max_pool_weight = stacked_cell_kernels(adapters)
            out = mixed_cell(code, kernel, max_pool_weight, groups, adapters[0].has_max_pool)
        return code.unflatten(-1, (groups, -1)), out.unflatten(-1, (groups, -1))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapters' (..., K) contribution to the adapted columns (``target_columns``), x's layout."""
        _, cell_out = self.codes(x)
        lora_B = torch.block_diag(*[a.lora_B for a in self.adapters.values()])
        delta = F.linear(cell_out.flatten(-2), lora_B)
        return delta.reshape(*x.shape[:-1], delta.shape[-1])

    def delta_weight(self, folds: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The float64 (3*dim, C) dense update ``W_d M W_e``, one r x r fold ``M`` per projection.

        ``folds[target]`` stands in for that projection's cell (the identity for
        plain LoRA); rows of projections without an adapter stay zero.
        """
        weight = self.base_layer.weight
        delta = torch.zeros(weight.shape, dtype=torch.float64, device=weight.device)
        rows = self.target_columns.split([a.lora_B.shape[0] for a in self.adapters.values()])
        for (target, adapter), index in zip(self.adapters.items(), rows):
            delta[index] = adapter.lora_B.double() @ folds[target].double() @ adapter.lora_A.double()
        return delta

    def fused(self) -> "FusedQKV":
        """The exact ``FusedQKV`` form of this layer: the cell collapsed into one fixed kernel."""
        adapters = list(self.adapters.values())
        with torch.no_grad():
            empty = self.base_layer.weight.new_zeros(0)
            linear = adapters[0].has_cell and adapters[0].linear_cell
            kernel, max_pool_weight = stacked_cell_kernels(adapters) if linear else (empty, empty)
            cell = FusedDartsCell(adapters) if adapters[0].has_cell and not linear else None
            tensors = {
                "lora_A": torch.cat([a.lora_A for a in adapters]).detach().clone(),
                "cell_kernel": kernel.detach().clone(),
                "max_pool_weight": max_pool_weight.detach().clone(),
                "lora_B": self.placed_lora_B().detach(),
            }
        return FusedQKV(self.base_layer, tensors, len(adapters), self.token_grid, cell)


class FusedDartsCell(nn.Module):
    """The fixed form of G non-linear (``darts``) cells: each op with its BN folded in and its weight applied.

    Input and output (B, G*r, H, W): group g's r channels go through adapter g's
    cell on its ``pc_mask`` channels and pass straight through on the others.
    Equal to the adapters' ``naive_cell`` in eval mode (BN on running statistics).
    """

    def __init__(self, adapters: Sequence[LowRankAdapter]) -> None:
        super().__init__()
        self.cells = nn.ModuleList()
        for g, adapter in enumerate(adapters):
            weights = adapter.mixing_weights().detach().double()
            ops = [
                fold_darts_op(adapter.ops[name], float(weights[i]))
                for i, name in enumerate(adapter.op_names)
                if name != "none"
            ]
            self.cells.append(nn.ModuleList(ops))
            inside, passing = adapter.cell_channel_index()
            # the cell's output channels, then the passing ones, put back in channel order
            order = torch.argsort(torch.cat([inside, passing]))
            self.register_buffer(f"inside_{g}", inside.clone())
            self.register_buffer(f"passing_{g}", passing.clone())
            self.register_buffer(f"order_{g}", order)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        outputs = []
        for g, (ops, chunk) in enumerate(zip(self.cells, image.chunk(len(self.cells), dim=1))):
            selected = chunk.index_select(1, getattr(self, f"inside_{g}"))
            mixed = sum(op(selected) for op in ops) if len(ops) else torch.zeros_like(selected)
            joined = torch.cat([mixed, chunk.index_select(1, getattr(self, f"passing_{g}"))], dim=1)
            outputs.append(joined.index_select(1, getattr(self, f"order_{g}")))
        return torch.cat(outputs, dim=1)


class FusedQKV(nn.Module):
    """Exact deployment form: base qkv plus one fixed low-rank branch.

    Buffers: ``lora_A`` (T*r, C), ``cell_kernel`` (T*r, r, s, s) applied as one
    grouped convolution, ``max_pool_weight`` (T*r,), and ``lora_B`` (3*dim, T*r):
    W_d's rows at their qkv output columns (zero elsewhere), so one GEMM adds
    the branch onto qkv whatever the projections' layout. ``token_grid`` as in
    ``AdaptedQKV``. A non-linear (``darts``) cell comes as ``cell``, a
    ``FusedDartsCell``, with empty ``cell_kernel`` and ``max_pool_weight``.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        tensors: Dict[str, torch.Tensor],
        groups: int,
        token_grid: Optional[Tuple[int, int]] = None,
        cell: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.groups = groups
        self.token_grid = token_grid
        self.cell = cell
        for name in ("lora_A", "cell_kernel", "max_pool_weight", "lora_B"):
            self.register_buffer(name, tensors[name])
        self._refresh_flags()

    def _refresh_flags(self) -> None:
        """Host-side facts about the buffers, so the forward never syncs with the device."""
        self.has_max_pool = bool(self.max_pool_weight.numel() and self.max_pool_weight.any())

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh_flags()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.base_layer(x)
        # one GEMM adds W_d's product straight onto qkv (no separate add pass)
        code = self.cell_code(x)
        out = torch.addmm(qkv.reshape(-1, qkv.shape[-1]), code.reshape(-1, code.shape[-1]), self.lora_B.t())
        return out.view(qkv.shape)

    def cell_code(self, x: torch.Tensor) -> torch.Tensor:
        """The (..., T*r) code after the fixed cell, in x's layout."""
        code = F.linear(_as_grid(x, self.token_grid), self.lora_A)
        if self.cell is not None:
            code = self.cell(code.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        elif self.cell_kernel.numel():
            code = mixed_cell(code, self.cell_kernel, self.max_pool_weight, self.groups, self.has_max_pool)
        return code.reshape(*x.shape[:-1], code.shape[-1])

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed branch's (..., 3*dim) contribution (zero on columns without an adapter)."""
        return F.linear(self.cell_code(x), self.lora_B)
