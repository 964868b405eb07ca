"""TrialRecipe's setup, one method per component in the order `setup` calls them: accelerate,
the data, the base model, its reference outputs, the validation set, LoRA, SLA, compilation,
sharding (parallel fsdp), the optimizer, and the checkpoint to resume from. TrialRecipe
(train.py) inherits it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from orchestrator.data import StepSampler, build_datasets
from orchestrator.data.encoded import CaptionTable, EncodedClips, read_manifest
from orchestrator.models.experts import ExpertPair, freeze_untrained, sla_targets
from orchestrator.models.wan_presets import PRESETS, ModelShape

from . import evaluate as ev
from .base_model import folder_fingerprint, load_base_model
from .base_outputs import base_reference
from .callbacks import PrintCallback
from .checkpoint import FrozenBase, load_checkpoint
from .compile import compiled_blocks
from .config import autocast_dtype
from .distill import Teacher
from .flow_matching import class_prompts
from .lora import add_lora, base_identity, lora_parameters
from .parallel import ShardedState, is_sharded, prepare_sharded, shard_model
from .pipeline_data import prepare_encoded
from .timesteps import TimestepPlan, ddp_kwargs
from .validation import VideoValidation


class TrialSetup:
    """The setup half of TrialRecipe: builds what `train` uses, from the attributes __init__ set."""

    # ---- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_accelerator()
        self._setup_data()
        self._setup_model()
        self._setup_reference()
        self._setup_teacher()
        self._setup_validation()
        self._setup_lora()
        self._setup_sla()
        self._setup_compile()
        self._setup_parallel()
        self._setup_optimizer()
        if self.sharded is None:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        else:
            self.model, self.optimizer = prepare_sharded(
                self.accelerator, self.model, self.optimizer
            )
            self.sharded.optimizer = self.optimizer
        if self.frozen is not None:
            self.frozen.register(self.accelerator)
        self._setup_resume()

    def _setup_accelerator(self) -> None:
        cfg = self.train_cfg
        # cpu=True without CUDA: accelerate only forms a multi-process (gloo) group on CPUs when told.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            kwargs_handlers=ddp_kwargs(cfg),
        )
        set_seed(cfg.seed)
        if self.callback is None:
            self.callback = PrintCallback(cfg.steps, is_main=self.accelerator.is_main_process)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _setup_data(self) -> None:
        cfg = self.train_cfg
        if cfg.is_pipeline:
            self._setup_encoded_data()
        else:
            self._setup_pixel_data()
        self.sampler = StepSampler(
            len(self.train_set),
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            world_size=self.accelerator.num_processes,
            seed=cfg.seed,
        )

    def _setup_encoded_data(self) -> None:
        """A pipeline's clips and captions, encoded before the trials (here, when run alone)."""

        if self.encoded is None:
            log = print if self.accelerator.is_main_process else (lambda _msg: None)
            with self.accelerator.main_process_first():
                self.encoded = prepare_encoded(
                    self.train_cfg, device=self.accelerator.device, log=log
                )
        self.manifest = read_manifest(self.encoded)
        self.train_set = EncodedClips(self.manifest, "train")
        self.val_set = EncodedClips(self.manifest, "val")
        self.train_prompts = CaptionTable.of_split(self.manifest, "train")
        self.val_prompts = CaptionTable.of_split(self.manifest, "val")
        self.channels = int(self.manifest["latent_shape"][0])
        self.clip_shape = tuple(self.manifest["latent_shape"][1:])

    def _setup_pixel_data(self) -> None:
        cfg, data = self.train_cfg, self.train_cfg.data
        preset = PRESETS.get(cfg.model)
        frames, size = self.clip_shape = cfg.clip_shape  # 0: unused (a folder's clips)
        self.channels = preset.in_channels if preset else _local_in_channels(cfg.model)
        self.train_set, self.val_set = build_datasets(
            data.source,
            channels=self.channels,
            frames=frames,
            size=size,
            num_train=data.num_train,
            num_val=data.num_val,
            seed=cfg.data_seed,
        )

    def _setup_model(self) -> None:
        cfg, acc = self.train_cfg, self.accelerator
        log = print if acc.is_main_process else (lambda _msg: None)
        model, self.base_id = load_base_model(
            cfg, device=acc.device, mixed_precision=self.mixed_precision, log=log
        )
        self.model = model.to(acc.device)
        self.shape = ModelShape.of(model)
        _, f, h, w = self.train_set[0][0].shape
        self.tokens = self.shape.tokens(f, h, w)
        if not cfg.is_pipeline:  # one fixed random "prompt" per digit class
            self.train_prompts = self.val_prompts = class_prompts(cfg.text_len, self.shape.text_dim)
        # FLOPs per sample: one expert runs it (ExpertPair), with every parameter it has
        one = model.transformer if isinstance(model, ExpertPair) else model
        self.n_params = sum(p.numel() for p in one.parameters())
        self.timesteps = TimestepPlan.of(
            model, cfg.experts, sampling=cfg.timestep_sampling, shift=self.shift, seed=cfg.seed
        )
        if cfg.frozen_base:  # checkpoints name this base instead of copying it
            identity = base_identity(cfg, self.base_id, model, mixed_precision=self.mixed_precision)
            self.frozen = FrozenBase(self.model, identity, lora=cfg.lora is not None)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()

    def _setup_reference(self) -> None:
        """The full-attention base on the fixed val batch: its loss and its samples, computed once
        (once per sweep with a reference_cache: every trial starts from the same base)."""
        cfg = self.train_cfg
        self.val = ev.make_val_batch(
            self.val_set, self.val_prompts, seed=cfg.seed, device=self.accelerator.device
        )
        common = {"batch_size": cfg.batch_size, "autocast": self.accelerator.autocast}

        def compute() -> tuple[float, torch.Tensor]:
            loss = ev.val_loss(self.model, self.val, **common)
            sampler = {"steps": cfg.sample_steps, "shift": self.shift}
            return loss, ev.samples(self.model, self.val, **sampler, **common)

        self.model.eval()
        reference = base_reference(self.reference_cache, self._reference_key(), compute)
        self.model.train()
        self.base_val_loss = reference.val_loss
        self.base_samples = reference.samples.to(self.accelerator.device)
        self.reference_cached = reference.cached

    def _setup_teacher(self) -> None:
        """The base's velocities on the val batch (val/distill_loss of every trial, so the two
        objectives are scored alike) and, for distill, the teacher (distill.py): the trial's own
        model with the adapter off and SLA bypassed where the base stays frozen, else one frozen
        copy in the autocast dtype."""
        cfg, acc = self.train_cfg, self.accelerator
        self.model.eval()
        self.val_teacher = ev.val_velocities(
            self.model, self.val, batch_size=cfg.batch_size, autocast=acc.autocast
        )
        self.model.train()
        self.teacher = None
        if cfg.objective != "distill":
            return
        if cfg.frozen_base:
            self.teacher = Teacher(
                own=lambda: acc.unwrap_model(self.model),
                handle=lambda: self.handle,
                autocast=acc.autocast,
            )
        else:
            dtype = autocast_dtype(self.mixed_precision) or torch.float32
            self.teacher = Teacher.copy_of(self.model, dtype, acc.autocast)

    def _setup_validation(self) -> None:
        """A pipeline's validation videos: the fixed prompts and noise, and the base's videos
        (before SLA goes in: the untouched base), computed once per sweep."""
        self.videos, self.base_videos = None, None
        cfg = self.train_cfg
        if not (cfg.is_pipeline and cfg.validation.prompts):
            return

        self.videos = VideoValidation(
            cfg.validation, self.manifest, frames=int(cfg.data.frames), size=cfg.data.hw,
            shift=self.shift, device=self.accelerator.device, autocast=self.accelerator.autocast,
        )  # fmt: skip
        if self.accelerator.is_main_process:
            directory = None if self.reference_cache is None else self.reference_cache / "videos"
            self.model.eval()
            self.base_videos = self.videos.base_videos(self.model, self.base_id, directory)
            self.model.train()

    def _reference_key(self) -> dict[str, Any]:
        """What the base's val loss and samples depend on: the base, the val batch, the sampler,
        the precision and the device type."""
        cfg = self.train_cfg
        key = {
            "base_model": self.base_id, "model": cfg.model, "data": dataclasses.asdict(cfg.data),
            "clip_shape": self.clip_shape, "channels": self.channels, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "sample_steps": cfg.sample_steps,
            "timestep_shift": self.shift, "mixed_precision": self.mixed_precision,
            "device": self.accelerator.device.type,
        }  # fmt: skip
        if cfg.model not in PRESETS:  # a local model directory: its files, not just its path
            key["model_files"] = folder_fingerprint(Path(cfg.model).expanduser())
        if cfg.data.source != "digits":
            key["data_files"] = folder_fingerprint(Path(cfg.data.source).expanduser())
        if cfg.is_pipeline:  # what the val batch is: the encoded clips and captions
            key["encoded_val"] = self.manifest["val"]
        return key

    def _setup_lora(self) -> None:
        """The adapter goes in after the base's references (it starts as the identity anyway)
        and before SLA, so SLA's processors call the adapted projections."""
        if self.train_cfg.lora is not None:
            add_lora(self.model, self.train_cfg.lora)

    def _setup_sla(self) -> None:
        if self.sla is not None:  # before prepare: DDP and the optimizer must see every proj_l
            from sla_kernel_glue import apply_sla

            targets = sla_targets(self.model, self.train_cfg.experts)
            self.handle = apply_sla(self.model, self.sla, targets=targets)
        if self.train_cfg.frozen_base:
            # SLA's own trainable weights (proj_l; frozen for sparse-only, linear_scope "none")
            # and the adapter's: nothing else trains.
            layers = self.handle.layers.values() if self.handle is not None else ()
            trainable = {id(p) for layer in layers for p in layer.parameters() if p.requires_grad}
            if self.train_cfg.lora is not None:
                trainable |= {id(p) for p in lora_parameters(self.model)}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in trainable)
        freeze_untrained(self.model, self.train_cfg.experts)  # a two-expert trial of one expert

    def _setup_compile(self) -> None:
        """torch.compile every transformer block (after SLA injection, before DDP wraps the model),
        under Inductor settings that hold until cleanup, which also restores the blocks' forwards."""
        if not self.train_cfg.compile:
            return
        blocks = self._compile_scope.enter_context(compiled_blocks(self.model))
        if self.accelerator.is_main_process:
            print(f"[recipe] torch.compile: {blocks} blocks (compiled at the first step)")

    def _setup_parallel(self) -> None:
        """fsdp over several processes: shard the model (after SLA, LoRA and compilation, before
        the optimizer, which must see the sharded parameters); ddp: accelerate's prepare wraps it."""
        self.sharded: ShardedState | None = None
        if not is_sharded(self.train_cfg.parallel, self.accelerator):
            return
        blocks = shard_model(self.model, mixed_precision=self.mixed_precision)
        # the optimizer joins at prepare; a frozen base stays out of the sharded checkpoints
        self.sharded = ShardedState(self.model, None, frozen=self.train_cfg.frozen_base)
        if self.accelerator.is_main_process:
            print(f"[recipe] fsdp: {blocks} blocks sharded over {self.accelerator.num_processes}")

    def _setup_optimizer(self) -> None:
        cfg = self.train_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "nothing to train: train_base is false, there is no lora and SLA has no "
                "trainable weights (linear_scope 'none' freezes proj_l); set train_base true"
            )
        self.optimizer = torch.optim.AdamW(
            self._param_groups(params), lr=cfg.lr, weight_decay=cfg.weight_decay
        )

    def _param_groups(self, params: list) -> list:
        """The parameters as one group (as before issue 36); with learned_lr_scale != 1 and SLA
        learned parts (router projections, alpha), those in a group of their own whose
        "lr_scale" the training loop multiplies the step's lr by."""
        scale = self.train_cfg.learned_lr_scale
        layers = self.handle.layers.values() if self.handle is not None else ()
        learned = {
            id(p) for layer in layers for name, p in layer.named_parameters()
            if not name.startswith("proj_l.")
        }  # fmt: skip
        if scale == 1.0 or not learned & {id(p) for p in params}:
            return params
        groups = [
            {"params": [p for p in params if id(p) not in learned], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in learned], "lr_scale": scale},
        ]
        return [g for g in groups if g["params"]]

    def _setup_resume(self) -> None:
        self.resumed_metrics: dict[str, float] = {}
        if self.resume_from is not None:
            trial = load_checkpoint(
                self.accelerator,
                self.handle,
                self.resume_from,
                sla=self.sla,
                base_model=self.base_id,
                frozen=self.frozen,
                sharded=self.sharded,
            )
            self.start_step = trial["step"]
            # Reports before the next evaluation carry the checkpoint's eval metrics (as a straight run's do).
            self.resumed_metrics = dict(trial.get("metrics") or {})


def _local_in_channels(path: str) -> int:

    return int(json.loads((Path(path).expanduser() / "config.json").read_text())["in_channels"])
