"""Stage-wise NAS-LoRA training (paper Alg. 1) with checkpoints that lose nothing.

Stage 1 updates the weights (adapters, decoder, class head) with alpha fixed; from epoch
``search_start`` (T_B) on, stage 2 then updates alpha with the weights fixed, each with its own
Adam. Stage 2 is a second forward and backward pass at the updated weights (``alpha_pass="second"``,
Alg. 1 as written), or it reuses stage 1's backward (``alpha_pass="same"``: alpha's gradient is
taken at the weights before their update, a first-order shortcut that costs no extra pass).
``joint`` updates both from one backward pass from the first epoch (the paper's Table 9, first
row). The sample order and flips (``sampling``) and the weights' learning rate (``schedule``;
alpha's is constant, as in DARTS) are pure functions of (seed, epoch, index) and of the step, so
a resumed run repeats an uninterrupted one exactly. Each epoch's record in ``metrics.jsonl`` holds
the learning rates used and, for the NAS methods, the mean op shares (softmax(alpha)).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch

from naslora_deploy.common import outputs as run_names
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import IGNORE_INDEX
from naslora_deploy.common.io import atomic_write, atomic_write_text, sha256_of
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.common.outputs import prepare_run_dir
from naslora_deploy.common.progress import progress as progress_bar
from naslora_deploy.core.adapters.injection import (
    adapted_layers,
    add_adapters,
    architecture_parameters,
    weight_parameters,
)
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import VARIANTS, build_sam
from naslora_deploy.core.model.weights import base_weights_file, weights_sha256
from naslora_deploy.core.runs import checkpoint as saved
from naslora_deploy.core.runs.architecture import search_ran
from naslora_deploy.core.runs.checkpoint import (
    TRAINING_STATE_NAME,
    WEIGHTS_NAME,
    RunSpec,
    read_spec,
    save_checkpoint,
    trainable_state,
)
from naslora_deploy.core.runs.peft_adapter import read_peft_adapter
from naslora_deploy.training import acceleration
from naslora_deploy.training.acceleration import pick_device
from naslora_deploy.training.config import TrainConfig
from naslora_deploy.training.data.dataset import Augmentation, SegmentationDataset
from naslora_deploy.training.data.folder import DataSplits, discover
from naslora_deploy.training.distributed import (
    DistInfo,
    average_gradients,
    barrier,
    init_distributed,
    ranks_agree,
    shard,
    shutdown,
)
from naslora_deploy.training.evaluate import evaluate, headline
from naslora_deploy.training.losses import binary_loss, box_loss, multiclass_loss, require_finite
from naslora_deploy.training.optimizers import build_optimizers, set_schedule_factor
from naslora_deploy.training.prefix_cache import PrefixCache
from naslora_deploy.training.prompts import training_prompts
from naslora_deploy.training.sampling import epoch_order, flip_batch
from naslora_deploy.training.schedule import learning_rate, search_never_starts, total_steps
from naslora_deploy.training.settings import prompt_hint

__all__ = ["Trainer", "TrainConfig", "train", "epoch_order", "flip_batch", "op_shares", "pick_device"]


def op_shares(sam) -> Dict[str, float]:
    """Mean softmax(alpha) per candidate op over every adapted (block, projection); {} without a cell."""
    totals: Dict[str, float] = {}
    count = 0
    with torch.no_grad():
        for _, layer in adapted_layers(sam):
            for adapter in layer.adapters.values():
                if not adapter.op_names:
                    continue
                for name, weight in zip(adapter.op_names, adapter.op_weights().float().tolist()):
                    totals[name] = totals.get(name, 0.0) + weight
                count += 1
    return {name: total / count for name, total in totals.items()}


@contextlib.contextmanager
def frozen(params: List[torch.nn.Parameter]) -> Iterator[None]:
    """Hold ``params`` fixed: no gradients are computed for them inside the block."""
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, was in zip(params, previous):
            p.requires_grad_(was)


class Trainer:
    """One training run: build, (resume), loop over epochs, checkpoint, evaluate."""

    def __init__(self, config: TrainConfig) -> None:
        config.validate()
        self.config = config
        self.device = pick_device(config.device)
        self.dist: DistInfo = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.bf16 = acceleration.uses_bf16(config.precision, self.device)
        formats = dict(category=config.category, bands=config.bands, stretch=config.stretch)
        self.splits: DataSplits = discover(
            config.data, config.classes, config.val_fraction, config.seed, config.skip_bad, **formats
        )
        if config.arch_data == "val" and not self.splits.split("val"):
            raise NasloraError("--arch-data val needs a validation split; add val/ or use --val-fraction > 0")
        if config.prompt == "box" and not self.splits.classes.binary:
            raise NasloraError(
                "--prompt box trains the binary head (one mask per box); this data set is multi-class"
            )
        self.out = prepare_run_dir(config, main=self.dist.is_main)  # refuse (or --overwrite) a used --out
        self.spec = self._build_model()
        self.weights = weight_parameters(self.model)  # adapters, decoder and class head
        self.alphas = architecture_parameters(self.model.sam)
        self.weight_opt, self.arch_opt = build_optimizers(self.model, config)
        per_rank = len(shard(list(range(len(self.splits.split("train")))), self.dist))
        steps_per_epoch = -(-per_rank // config.batch_size)
        self.total_steps = total_steps(config.epochs, steps_per_epoch, config.max_steps)
        self.search_note = search_never_starts(config, steps_per_epoch) if self.alphas else None
        if self.search_note and self.dist.is_main:
            print(f"warning: {self.search_note}", file=sys.stderr, flush=True)
        self.epoch, self.step, self.best = 0, 0, None
        self.history: List[dict] = []
        self.notes: List[str] = []  # hints said on stderr and kept in run_summary.json

    def _build_model(self) -> RunSpec:
        c = self.config
        adapter = c.adapter_config()
        peft = read_peft_adapter(c.init_from_peft) if c.init_from_peft else None
        adapter = peft.adapter_config(adapter) if peft else adapter
        saved_base = self.out / run_names.RUN_BASE
        bundled = VARIANTS[c.model].pretrained_checkpoint() if c.checkpoint is None and c.pretrained else None
        base = c.checkpoint or bundled or (saved_base if c.resume and saved_base.is_file() else None)
        c.pretrained = bool(c.checkpoint or bundled)  # recorded as it is: vit_tiny has no real weights
        torch.manual_seed(c.seed)  # random base weights (no checkpoint at all) and the class head
        sam = build_sam(c.model, base, pretrained=False)
        add_adapters(sam, adapter)
        if peft and not c.resume:  # a resumed run's own last/ weights replace these anyway
            peft.apply(sam)
        classes = self.splits.classes
        self.model = SegmentationModel(sam, classes.num_classes, c.queries).to(self.device)
        self.model.train()  # the frozen base stays in eval mode (core.modes)
        if c.prefix_cache and c.augment == "none" and not adapter.trains_encoder:
            self.model.encoder_cache = PrefixCache(sam.image_encoder, c.prefix_cache_mb * 2**20)
        if c.grad_checkpoint or (c.grad_checkpoint is None and self.device.type == "cuda"):
            acceleration.enable_gradient_checkpointing(sam)
        if c.compile:
            acceleration.compile_encoder_blocks(sam)
        base_record = self._record_base(sam, c.checkpoint or bundled)
        num_queries = self.model.class_head.queries.num_embeddings if self.model.class_head is not None else 0
        return RunSpec(
            c.model,
            adapter,
            classes,
            num_queries,
            sam.image_encoder.img_size,
            normalization=sam.normalization,
            prompt=c.prompt,
            training=c.to_dict(),
            **base_record,
        )

    def _record_base(self, sam, checkpoint) -> dict:
        """``RunSpec``'s base fields: path, sha256 (``weights_sha256``: index and shards) and ``base_random``
        (random weights, a choice ``TrainConfig._check_base_weights`` checked, saved in the run dir)."""
        if checkpoint:  # a hub folder is recorded by its weights file or shard index
            path = base_weights_file(checkpoint) or Path(checkpoint)
            # absolute, not resolved: a hub cache's index is a link into blobs/, away from its shards
            return {"base_checkpoint": os.path.abspath(path), "base_sha256": weights_sha256(path)}
        path = self.out / run_names.RUN_BASE
        if self.dist.is_main and not (self.config.resume and path.is_file()):
            from safetensors.torch import save_file

            base = {k: v.contiguous().cpu() for k, v in sam.state_dict().items() if ".adapters." not in k}
            base = {k.replace(".qkv.base_layer.", ".qkv."): v for k, v in base.items()}
            atomic_write(path, lambda tmp: save_file(base, str(tmp)))
        barrier(self.dist)
        return {
            "base_checkpoint": f"../{run_names.RUN_BASE}",
            "base_sha256": sha256_of(path),
            "base_random": True,
        }

    # ----- resume -------------------------------------------------------------------
    def resume(self) -> None:
        """Restore weights, both optimisers, epoch, step, best score and RNG state from ``last/``."""

        last = saved.resumable_checkpoint(self.out)  # last/ (or .last.old/) holding a training state
        spec = read_spec(last)
        if spec.adapter != self.spec.adapter or spec.variant != self.spec.variant:
            raise NasloraError(
                f"--resume: {last} was trained with other model/adapter options; use a new --out"
            )
        saved.load_trainable(self.model, last / WEIGHTS_NAME, "this run's model")  # damaged: CheckpointError
        state = saved.load_training_state(last / TRAINING_STATE_NAME, self.device)
        with saved.restoring(last / TRAINING_STATE_NAME):
            self.weight_opt.load_state_dict(state["weight_opt"])
            if self.arch_opt is not None and state.get("arch_opt"):
                self.arch_opt.load_state_dict(state["arch_opt"])
            self.epoch, self.step, self.best = state["epoch"], state["step"], state.get("best")
            torch.set_rng_state(state["torch_rng"])
            random.setstate(_tuple_state(state["python_rng"]))
        records = saved.read_jsonl(self.out / run_names.RUN_METRICS)
        self.history = [r for r in records if r.get("epoch", 0) < self.epoch]
        self.bf16 = acceleration.resumed_bf16(
            self.config.precision, self.device, self.history, self.bf16, self.dist.is_main
        )

    def training_state(self) -> dict:
        """Optimisers, counters and RNG state for ``last/training_state.pt``."""
        return {
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict() if self.arch_opt is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        }

    # ----- the loop -----------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        """Forward and loss of one batch (bf16 autocast on CUDA)."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        boxes = targets = valid = None
        if self.config.prompt == "box":
            boxes, targets, valid = self._box_prompts(batch)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.model(images, boxes)
        outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
        if boxes is not None:
            return box_loss(outputs, targets.to(self.device), valid.to(self.device))
        if self.spec.classes.binary:
            return binary_loss(outputs, labels)
        return multiclass_loss(outputs, labels, self.spec.classes.num_classes, self.config.no_object_weight)

    def _box_prompts(self, batch: dict):
        """Jittered boxes of each image's largest components (seeded by seed, epoch, index), their masks."""
        boxes, targets, valid = [], [], []
        for labels, index in zip(batch["labels"].numpy(), batch["index"].tolist()):
            image_boxes, masks = training_prompts(
                labels, self.config.box_jitter, [self.config.seed, self.epoch, index]
            )
            boxes.append(torch.from_numpy(image_boxes))
            targets.append(torch.from_numpy(masks))
            valid.append(torch.from_numpy(labels != IGNORE_INDEX)[None].expand(len(masks), -1, -1))
        return boxes, torch.cat(targets), torch.cat(valid)

    def stage(self, epoch: int) -> str:
        """Which steps run in ``epoch``: weights, weights+alpha (stage-wise) or joint."""
        if not self.alphas:
            return "weights"
        if self.config.joint:
            return "joint"
        return "weights+alpha" if epoch >= self.config.search_start else "weights"

    def finite(self, loss: torch.Tensor) -> torch.Tensor:
        return require_finite(loss, self.step + 1, self.current_lr(), self.config.arch_lr)

    def current_lr(self) -> float:
        """The decoder's learning rate of step ``self.step`` (``schedule.learning_rate``)."""
        return self.config.lr * self.schedule_factor()

    def schedule_factor(self) -> float:
        """The schedule at step ``self.step``: what every group's base learning rate is multiplied by."""
        c = self.config
        return learning_rate(self.step, self.total_steps, 1.0, c.lr_schedule, c.warmup_steps)

    def train_step(self, batch: dict, arch_batch: Optional[dict], stage: str) -> Dict[str, float]:
        """One step of Alg. 1 at the scheduled learning rate; returns the losses and ``lr``."""
        lr = self.current_lr()
        set_schedule_factor(self.weight_opt, self.schedule_factor())
        if stage == "joint" or (stage == "weights+alpha" and self.config.alpha_pass == "same"):
            return {**self._one_pass_step(batch, with_alpha=True), "lr": lr}
        result = {**self._one_pass_step(batch, with_alpha=False), "lr": lr}
        if stage == "weights+alpha":
            with frozen(self.weights):  # stage 2: weights fixed
                self.arch_opt.zero_grad(set_to_none=True)
                arch_loss = self.finite(self.loss(arch_batch if arch_batch is not None else batch))
                arch_loss.backward()
                average_gradients(self.alphas, self.dist)
                self.arch_opt.step()
            result["arch_loss"] = arch_loss.item()
        return result

    def _one_pass_step(self, batch: dict, with_alpha: bool) -> Dict[str, float]:
        """One forward and backward; the weights step, and alpha too when ``with_alpha``.

        Both gradients come from the same (weights, alpha) point, so alpha's update
        does not see this step's weight update: stage 1 then stage 2 at zero extra cost.
        """
        params = self.weights + (self.alphas if with_alpha else [])
        with frozen([] if with_alpha else self.alphas):
            self.weight_opt.zero_grad(set_to_none=True)
            if with_alpha:
                self.arch_opt.zero_grad(set_to_none=True)
            loss = self.finite(self.loss(batch))
            loss.backward()
            average_gradients(params, self.dist)
            self.weight_opt.step()
            if with_alpha:
                self.arch_opt.step()
        result = {"loss": loss.item()}
        if with_alpha:
            result["arch_loss"] = result["loss"]
        return result

    def _loader(self, pairs, order: List[int], augment: Optional[Augmentation] = None):
        s = self.spec
        dataset = SegmentationDataset(pairs, s.classes, s.image_size, s.normalization, augment)
        batches = [
            order[i : i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)
        ]
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=self.config.workers)

    def _arch_batches(self, epoch: int) -> Iterator[Optional[dict]]:
        if self.config.arch_data != "val":
            while True:
                yield None
        val = self.splits.split("val")
        cycle = 0
        while True:
            order = shard(epoch_order(len(val), self.config.seed + 7919, epoch * 1000 + cycle), self.dist)
            for batch in self._loader(val, order):
                yield batch
            cycle += 1

    def run(self) -> Path:
        """Train to ``epochs`` (or ``max_steps``); returns the run directory."""
        c = self.config
        if c.resume:
            self.resume()
        writer = self._tensorboard()
        train_pairs = self.splits.split("train")
        while self.epoch < c.epochs and not self._out_of_steps():
            epoch, stage = self.epoch, self.stage(self.epoch)
            started, losses, arch_losses, step_times, lrs = time.perf_counter(), [], [], [], []
            order = shard(epoch_order(len(train_pairs), c.seed, epoch), self.dist)
            arch_batches = self._arch_batches(epoch)
            bar = progress_bar(
                self._loader(train_pairs, order, Augmentation(c.augment, c.seed, epoch)),
                f"epoch {epoch + 1}/{c.epochs} [{stage}]",
                c.progress if self.dist.is_main else False,
            )
            for batch in bar:
                t0 = time.perf_counter()
                batch = flip_batch(batch, c.seed, epoch)
                result = self.train_step(
                    batch, next(arch_batches) if stage == "weights+alpha" else None, stage
                )
                step_times.append(time.perf_counter() - t0)
                self.step += 1
                losses.append(result["loss"])
                lrs.append(result["lr"])
                if "arch_loss" in result:
                    arch_losses.append(result["arch_loss"])
                bar.set_postfix(
                    loss=f"{result['loss']:.4f}",
                    lr=f"{result['lr']:.3g}",
                    arch_lr=c.arch_lr if stage != "weights" else 0,
                )
                if writer is not None:
                    writer.add_scalar("train/loss", result["loss"], self.step)
                if self._out_of_steps():
                    break
            self.epoch += 1
            self._end_epoch(
                epoch, stage, losses, arch_losses, step_times, lrs, time.perf_counter() - started, writer
            )
        self._finish()
        return self.out

    def _out_of_steps(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def _tensorboard(self):
        if not (self.config.tensorboard and self.dist.is_main):
            return None
        lazy_import("tensorboard", "tensorboard", "--tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / run_names.RUN_TENSORBOARD))

    def _end_epoch(self, epoch, stage, losses, arch_losses, step_times, lrs, seconds, writer) -> None:
        val_pairs = self.splits.split("val")
        record = {
            "epoch": epoch,
            "step": self.step,
            "stage": stage,
            "train_loss": sum(losses) / max(len(losses), 1),
            "arch_loss": sum(arch_losses) / len(arch_losses) if arch_losses else None,
            "lr": lrs[0] if lrs else self.current_lr(),  # the weights' lr at the epoch's first step
            "lr_end": lrs[-1] if lrs else self.current_lr(),  # ... and at its last
            "arch_lr": self.config.arch_lr if stage != "weights" else 0.0,
            "step_time_ms": 1000 * sorted(step_times)[len(step_times) // 2] if step_times else None,
            "precision": "bf16" if self.bf16 else "fp32",  # a resumed auto run keeps it (resumed_bf16)
            "seconds": seconds,
        }
        if self.alphas:
            record["op_shares"] = op_shares(self.model.sam)
        if self.model.encoder_cache is not None:
            record["prefix_cache"] = self.model.encoder_cache.stats()
        if self.dist.is_main:
            if val_pairs:
                record["val"] = evaluate(
                    self.model,
                    val_pairs,
                    self.spec.classes,
                    self.config.batch_size,
                    self.device,
                    self.config.prompt,
                    self.config.saliency_protocol,
                )
            self.history.append(record)
            self._write_epoch(record, writer)
        barrier(self.dist)

    def _write_epoch(self, record: dict, writer) -> None:
        # metrics first: a kill after it but before last/ is repaired by resume's filtering
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write_text(self.out / run_names.RUN_METRICS, text)
        self.spec.progress = {"epoch": self.epoch, "step": self.step, "val": record.get("val")}
        # best/ before last/: a kill in between re-runs the epoch, which re-saves best/ identically
        if "val" in record:
            _, score = headline(record["val"])
            if self.best is None or score > self.best:
                self.best = score
                save_checkpoint(self.out / run_names.RUN_BEST, self.model, self.spec)
        save_checkpoint(self.out / run_names.RUN_LAST, self.model, self.spec, self.training_state())
        val = record.get("val")
        epoch = f"{record['epoch'] + 1}/{self.config.epochs}"
        summary = f"epoch {epoch} [{record['stage']}] loss {record['train_loss']:.4f}"
        if val:
            name, score = headline(val)
            summary += f"  val {name} {score:.4f}" + ("  (best)" if score == self.best else "")
        print(summary, flush=True)
        hint = prompt_hint(self.config.prompt, val)
        if hint and hint not in self.notes:  # once a run, and in run_summary.json
            self.notes.append(hint)
            print(f"warning: {hint}", file=sys.stderr, flush=True)
        if writer is not None and val:
            writer.add_scalar(f"val/{headline(val)[0]}", headline(val)[1], self.step)

    def _finish(self) -> None:
        agree = (
            ranks_agree(list(trainable_state(self.model).values()), self.dist) if self.dist.enabled else True
        )
        if self.dist.is_main:
            summary = {
                "finished": True,
                "epoch": self.epoch,
                "step": self.step,
                "world_size": self.dist.world_size,
                "precision": "bf16" if self.bf16 else "fp32",
                "search_ran": search_ran(self.history),
                "best": self.best,  # the best validation IoU (binary) or mIoU (multi-class), None without val
                "notes": self.notes,
            }
            if self.dist.enabled:
                summary["ranks_identical"] = agree
            atomic_write_text(self.out / run_names.RUN_SUMMARY, json.dumps(summary, indent=2) + "\n")
        self.model.encoder_cache = None  # the cached prefix is this run's only; free it
        shutdown(self.dist)
        if not agree:
            raise NasloraError(
                "data-parallel ranks ended with different weights; please report this as a bug"
            )


def _tuple_state(state):
    """``random.setstate`` wants tuples; a saved state may come back with lists."""
    return tuple(_tuple_state(s) for s in state) if isinstance(state, (list, tuple)) else state


def train(config: TrainConfig) -> Path:
    """Run a whole training job; returns the run directory."""
    trainer = Trainer(config)
    if trainer.dist.is_main:
        atomic_write_text(trainer.out / run_names.RUN_CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
    return trainer.run()
