"""The Dassl-compatible trainer life cycle: data, model registration, epochs, checkpoints, test.

Class and method names follow Dassl 0.6.3 (``TrainerBase`` → ``SimpleTrainer`` → ``TrainerX``) so a
plugin written for Dassl runs unchanged. What differs is underneath: checkpoints load safely and carry
the random-number state, so a killed run resumes to the same result; a resume point is kept after
every epoch; checkpoints carry the run's fingerprint (the settings that change results), so a resume
into a folder of another run is refused instead of silently continuing it; a missing or damaged newest
checkpoint falls back to the previous complete one; and ``--seed 0`` is a seed like any other.
"""

from __future__ import annotations

import datetime
import logging
import os
import os.path as osp
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from vlprompt.engine import distributed
from vlprompt.engine.checkpoint import (
    FINGERPRINT_KEY,
    RESUME_FILE,
    SETTINGS_KEY,
    atomic_save,
    find_resume_point,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from vlprompt.engine.data import DataManager
from vlprompt.engine.evaluation import build_evaluator
from vlprompt.engine.fingerprint import describe_differences, differing_keys, fingerprint, result_settings
from vlprompt.engine.logging import AverageMeter, MetricMeter, TensorboardWriter
from vlprompt.engine.progress import track
from vlprompt.engine.registry import TRAINER_REGISTRY
from vlprompt.engine.seeding import capture_rng_state, restore_rng_state
from vlprompt.errors import UserError, UserFileNotFoundError, write_error
from vlprompt.io import strip_module_prefix

__all__ = [
    "FINGERPRINT_KEY",
    "RESUME_FILE",
    "SETTINGS_KEY",
    "NoCompleteCheckpointError",
    "NonFiniteLossError",
    "ResumeMismatchError",
    "SimpleTrainer",
    "TrainerBase",
    "TrainerX",
    "build_trainer",
]

log = logging.getLogger(__name__)


class ResumeMismatchError(UserError, ValueError):
    """The output folder holds a checkpoint of a run with other result-changing settings."""


class NoCompleteCheckpointError(UserError, RuntimeError):
    """Checkpoints are there but none is complete, so resuming would silently start over."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; the message says where and what to resume from."""


def resolve_device(cfg) -> torch.device:
    """CUDA when available and ``USE_CUDA``; under torchrun, this process's local GPU."""
    if torch.cuda.is_available() and cfg.USE_CUDA:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def adopt_data_manager(trainer: Any, dm: Any) -> None:
    """Give ``trainer`` the attributes Dassl's ``build_data_loader`` sets from a data manager (its loaders,
    class count and names, ``dm``); works with Dassl's data manager as well as ours."""
    trainer.train_loader_x = dm.train_loader_x
    trainer.train_loader_u = dm.train_loader_u
    trainer.val_loader = dm.val_loader
    trainer.test_loader = dm.test_loader
    trainer.num_classes = dm.num_classes
    trainer.num_source_domains = dm.num_source_domains
    trainer.lab2cname = dm.lab2cname
    trainer.dm = dm


class TrainerBase:
    """Registered models with their optimisers and schedulers, and the epoch loop around them."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict[str, Any] = OrderedDict()
        self._scheds: OrderedDict[str, Any] = OrderedDict()
        self._writer: TensorboardWriter | None = None
        self.last_checkpoint: str | None = None  # the newest file save_model wrote (named on a NaN stop)

    def register_model(self, name: str = "model", model: nn.Module | None = None, optim=None, sched=None) -> None:
        """Make ``model`` (with its optimiser and scheduler) part of checkpoints and mode switches."""
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise KeyError(f'A model named "{name}" is already registered')
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: str | list[str] | None = None) -> list[str]:
        registered = list(self._models.keys())
        if names is None:
            return registered
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in registered:
                raise KeyError(f'No model named "{name}"; registered: {registered}')
        return names

    # ----------------------------------------------------------------------------------- checkpoints
    def save_model(
        self, epoch: int, directory: str, is_best: bool = False, val_result: float | None = None,
        model_name: str = "",
    ) -> None:
        """One Dassl-format checkpoint per registered model, plus the RNG state for an exact resume and
        the run's fingerprint (what it is, so a resume with other settings is refused)."""
        if not distributed.is_main_process():
            return
        rng_state = capture_rng_state()
        settings = self.run_settings()
        for name in self.get_model_names():
            optim = self._optims[name]
            sched = self._scheds[name]
            state = {
                "state_dict": strip_module_prefix(self._models[name].state_dict()),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
                "rng_state": rng_state,
                FINGERPRINT_KEY: fingerprint(settings),
                SETTINGS_KEY: settings,
                **self.checkpoint_extras(name),
            }
            previous = getattr(self, "last_checkpoint", None)
            try:
                if model_name == RESUME_FILE:
                    # A resume point is not a result: no message, and the `checkpoint` pointer is left alone.
                    path = osp.join(directory, name, RESUME_FILE)
                    os.makedirs(osp.dirname(path), exist_ok=True)
                    atomic_save(state, path)
                    self.last_checkpoint = path
                else:
                    self.last_checkpoint = save_checkpoint(
                        state, osp.join(directory, name), is_best=is_best, model_name=model_name
                    )
            except OSError as err:
                intact = (f"the previous checkpoint {previous} is intact" if previous else
                          "no checkpoint of this run had been saved yet")
                raise write_error(err, err.filename or osp.join(directory, name), intact + (
                    "; free some space and run the same command again to resume")) from err

    def run_settings(self) -> dict:
        """The settings that change this run's results (``result_settings`` of the config plus
        :meth:`fingerprint_extras`); stored in checkpoints and compared on resume. Computed once."""
        settings = self.__dict__.get("_run_settings")
        if settings is None:
            settings = result_settings(self.cfg, self.fingerprint_extras()) if hasattr(self, "cfg") else {}
            self._run_settings = settings
        return settings

    def fingerprint_extras(self) -> dict:
        """Result-changing facts the config cannot state (e.g. the hash of the weights file a backbone
        name resolves to); trainers that load models add them here. Plain values only."""
        return {}

    def checkpoint_extras(self, name: str) -> dict:
        """Extra top-level checkpoint entries of model ``name`` (method state beyond its weights, such
        as a feature memory); plain values and tensors only. The original code ignores unknown keys."""
        return {}

    def restore_checkpoint_extras(self, name: str, checkpoint: dict) -> None:
        """Inverse of :meth:`checkpoint_extras`, called when a run resumes."""

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore models, optimisers, schedulers and RNG from ``directory``; returns the start epoch.

        Each model resumes from its newest complete checkpoint (a pointer to a missing or damaged file
        falls back, with a warning); a checkpoint of a run with other result-changing settings is
        refused unless ``resume_anyway`` is set (``--resume-anyway``), which run.json then records.
        """
        self._phase = "train"
        names = self.get_model_names()
        for name in names:
            # Temporary files of writers killed mid-write; a live process's are left alone.
            remove_stale_temp_files(osp.join(directory, name))
        points, missing, damaged = {}, [], []
        for name in names:
            search = find_resume_point(osp.join(directory, name))
            points[name] = search.point
            if search.point is None:
                missing += search.missing
                damaged += search.damaged
            for reason in search.point.passed_over if search.point else ():
                log.warning(f"{reason}; resuming from {search.point.path} instead")
        if damaged:
            raise NoCompleteCheckpointError(
                f"{directory} holds checkpoints but none is complete: {'; '.join(damaged)}. Delete the damaged "
                "file(s) to train from scratch, or pass another --output-dir"
            )
        if not names or any(point is None for point in points.values()):
            for reason in missing:
                log.warning(f"{reason}, and no other checkpoint is there")
            log.info("No checkpoint found, train from scratch")
            return 0
        self._check_resume_settings(directory, points)
        log.info(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        rng_state = None
        for name in names:
            checkpoint = points[name].checkpoint
            self._models[name].load_state_dict(strip_module_prefix(checkpoint["state_dict"]))
            log.info("Loaded model weights")
            if self._optims[name] is not None and checkpoint.get("optimizer"):
                self._optims[name].load_state_dict(checkpoint["optimizer"])
                log.info("Loaded optimizer")
            if self._scheds[name] is not None and checkpoint.get("scheduler"):
                self._scheds[name].load_state_dict(checkpoint["scheduler"])
                log.info("Loaded scheduler")
            self.restore_checkpoint_extras(name, checkpoint)
            start_epoch = checkpoint["epoch"]
            rng_state = checkpoint.get("rng_state", rng_state)
            log.info(f"Previous epoch: {start_epoch}")
            self.last_checkpoint = points[name].path
        if rng_state is not None:
            restore_rng_state(rng_state)
        return start_epoch

    def _check_resume_settings(self, directory: str, points: dict) -> None:
        """Refuse (or, with ``resume_anyway``, record) checkpoints of a run with other settings."""
        current = self.run_settings()
        for point in points.values():
            saved = point.checkpoint.get(SETTINGS_KEY)
            if saved is None:
                log.warning(f"{point.path} does not record the settings of the run that wrote it (saved before "
                            "vlprompt kept them, or by the original Dassl/CoOp code); resuming without checking them")
                continue
            if fingerprint(saved) == fingerprint(current):
                continue
            differences = "; ".join(describe_differences(saved, current, first_name="checkpoint").splitlines())
            if not getattr(self, "resume_anyway", False):
                raise ResumeMismatchError(
                    f"{directory} holds a run with other settings ({differences}), so resuming it would attribute "
                    "its weights to this run's settings. Pass a new --output-dir to start this run, or "
                    "--resume-anyway to continue that run with the new settings (run.json records it)"
                )
            log.warning(f"Resuming {point.path} although its settings differ ({differences}), as "
                        "--resume-anyway asks; run.json records it")
            self.resumed_anyway = {
                "checkpoint": osp.abspath(point.path),
                "fingerprint": point.checkpoint.get(FINGERPRINT_KEY) or fingerprint(saved),
                "differences": {key: [before, now] for key, before, now in differing_keys(saved, current)},
            }

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """Load ``directory/<name>/model-best.pth.tar`` (or ``model.pth.tar-<epoch>``) into each model."""
        if not directory:
            log.info("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise UserFileNotFoundError(f'Model not found at "{model_path}"')
            checkpoint = load_checkpoint(model_path, map_location=self.device)
            val_result = checkpoint.get("val_result")
            shown = "None" if val_result is None else f"{val_result:.1f}"
            log.info(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}, val_result={shown})")
            self._models[name].load_state_dict(strip_module_prefix(checkpoint["state_dict"]))

    # ----------------------------------------------------------------------------------- loop parts
    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f'Unknown model mode "{mode}"; use "train" or "eval"')

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        """Stop on a non-finite loss, saying where it happened and what to resume from."""
        if torch.isfinite(loss).all():
            return
        epoch, batch = getattr(self, "epoch", 0), getattr(self, "batch_idx", 0)
        num_batches = getattr(self, "num_batches", 0) or 0
        last_good = getattr(self, "last_checkpoint", None)
        where = f"epoch {epoch + 1}, batch {batch + 1} (step {epoch * num_batches + batch + 1})"
        saved = (
            f"the last good checkpoint is {last_good}"
            if last_good
            else "no checkpoint was saved before it (the run stopped in its first epoch)"
        )
        raise NonFiniteLossError(
            f"Loss is infinite or NaN! ({loss.detach().float().flatten()[0].item()}) at {where}; {saved}. "
            "Lower OPTIM.LR or use TRAINER.<METHOD>.PREC fp32, then resume with the same command."
        )

    def interruption_hint(self) -> str:
        """Where a Ctrl-C stopped this run and what running the same command again does (one line)."""
        testing = getattr(self, "_testing", None)
        if getattr(self, "_phase", None) != "train":
            if testing:
                return f"stopped while evaluating on the {testing} set; run the same command again to evaluate"
            return "stopped before training started; run the same command again to start"
        epoch, max_epoch = getattr(self, "epoch", 0), getattr(self, "max_epoch", 0)
        where = f"epoch {epoch + 1}/{max_epoch}"
        if testing:
            where += f" while evaluating on the {testing} set"
        elif getattr(self, "batch_idx", None) is not None and getattr(self, "num_batches", None):
            where += f", batch {self.batch_idx + 1}/{self.num_batches}"
        return f"stopped in {where}; run the same command again to resume from the last finished epoch"

    def init_writer(self, log_dir: str) -> None:
        if self._writer is None:
            self._writer = TensorboardWriter(log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def train(self, start_epoch: int, max_epoch: int) -> None:
        """Generic loop: ``before_train``, then per epoch ``before_epoch/run_epoch/after_epoch``."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def run_epoch(self) -> None:
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """Builds data, model and evaluator from a cfg; trains, checkpoints and tests."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.check_cfg(cfg)
        self.device = resolve_device(cfg)
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.test_results: OrderedDict | None = None
        self.build_data_loader()
        self.build_model()
        self.wrap_distributed()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg) -> None:
        """Validate method-specific config values (optional override)."""

    def build_data_loader(self) -> None:
        adopt_data_manager(self, DataManager(self.cfg))

    def wrap_distributed(self) -> None:
        """Under torchrun, wrap ``self.model`` in DistributedDataParallel so gradients are averaged."""
        model = getattr(self, "model", None)
        if distributed.world_size() <= 1 or model is None:
            return
        if not any(p.requires_grad for p in model.parameters()):
            return  # nothing to synchronise (zero-shot and other frozen models)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def build_model(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement build_model() and register its trainable parts"
        )

    def train(self) -> None:
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.cfg.OUTPUT_DIR
        self.start_epoch = self.resume_model_if_exist(directory)
        if distributed.is_main_process():
            # TensorboardWriter makes the folder only when tensorboard is installed (no empty tensorboard/).
            self.init_writer(osp.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()

    def after_train(self) -> None:
        log.info("Finish training")
        self._remove_resume_points()
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                log.info("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                log.info("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        log.info(f"Elapsed: {elapsed}")
        self.close_writer()

    def after_epoch(self) -> None:
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)
        else:
            self.save_model(self.epoch, self.output_dir, model_name=RESUME_FILE)

    def _remove_resume_points(self) -> None:
        if not distributed.is_main_process():
            return
        for name in self.get_model_names():
            path = osp.join(self.output_dir, name, RESUME_FILE)
            if osp.isfile(path):
                os.remove(path)

    @torch.no_grad()
    def test(self, split: str | None = None) -> float:
        """Evaluate on ``split`` (default ``TEST.SPLIT``; val falls back to test when there is none)."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        log.info(f"Evaluate on the *{split}* set")
        self._testing = split  # for interruption_hint
        for batch in track(data_loader, desc=split, enabled=self.cfg.VERBOSE):
            inputs, labels = self.parse_batch_test(batch)
            self.evaluator.process(self.model_inference(inputs), labels)
        self._testing = None
        results = self.evaluator.evaluate()
        for key, value in results.items():
            if np.isscalar(value):
                self.write_scalar(f"{split}/{key}", value, self.epoch)
        if split == "test":
            self.test_results = results
        return next(iter(results.values()))

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer using labelled data only: one pass over ``train_loader_x`` per epoch."""

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        if hasattr(self.train_loader_x.sampler, "set_epoch"):
            self.train_loader_x.sampler.set_epoch(self.epoch)  # a new permutation per epoch, same on all ranks
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)

            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                remaining = self.num_batches - self.batch_idx - 1
                remaining += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * remaining)))
                log.info(
                    f"epoch [{self.epoch + 1}/{self.max_epoch}] batch [{self.batch_idx + 1}/{self.num_batches}] "
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) "
                    f"data {data_time.val:.3f} ({data_time.avg:.3f}) "
                    f"{losses} lr {self.get_current_lr():.4e} eta {eta}"
                )
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device), batch["domain"].to(self.device)


def build_trainer(cfg):
    """Instantiate the trainer registered as ``cfg.TRAINER.NAME``."""
    log.info(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
