"""``train.py``: CoOp's command line (same flags, same config merge order, same outputs)."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlprompt.engine import distributed
from vlprompt.engine.config import extend_cfg, merge_from_file, merge_from_list
from vlprompt.engine.data import report_skipped_images
from vlprompt.engine.logging import setup_console_logging, setup_logger, sync_log, teardown_logger
from vlprompt.engine.runlock import acquire_run_lock
from vlprompt.engine.seeding import set_random_seed
from vlprompt.errors import UserPermissionError, run_cli
from vlprompt.run_record import utc_now, write_run_record

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The flags of CoOp's train.py, with the same names, types and defaults."""
    parser = argparse.ArgumentParser(description="Train or evaluate a prompt-tuning method (CoOp-compatible).")
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=-1, help="a value >= 0 fixes the seed (0 included)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument(
        "--resume-anyway", action="store_true",
        help="resume the output directory's checkpoint even though it was trained with other settings "
             "(recorded in run.json); without it such a resume is refused",
    )
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line"
    )
    return parser


def reset_cfg(cfg, args: argparse.Namespace) -> None:
    """Apply the command-line flags to ``cfg`` (step 3 of the merge order)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    # The reference tests `if args.seed:`, which silently drops --seed 0; any seed >= 0 counts here.
    if args.seed is not None and args.seed >= 0:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def register_plugins() -> None:
    """Import the shipped trainers and datasets so their registrations and config keys exist."""
    import vlprompt.datasets
    import vlprompt.trainers  # noqa: F401


def setup_cfg(args: argparse.Namespace):
    """Defaults → method keys → dataset yaml → method yaml → flags → ``KEY VALUE`` opts, then frozen."""
    from vlprompt.compat import get_cfg_default

    register_plugins()
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    reset_cfg(cfg, args)
    merge_from_list(cfg, args.opts or [])
    cfg.freeze()
    return cfg


def print_args(args: argparse.Namespace, cfg) -> None:
    log.info("***************")
    log.info("** Arguments **")
    log.info("***************")
    for key in sorted(vars(args)):
        log.info(f"{key}: {getattr(args, key)}")
    log.info("************")
    log.info("** Config **")
    log.info("************")
    log.info(cfg)


def env_info() -> str:
    """A short description of the software and devices (Dassl runs the slow torch collect_env here)."""
    import vlprompt
    from vlprompt.compat import ENGINE

    lines = [
        f"vlprompt: {vlprompt.__version__} (engine: {ENGINE})",
        f"Python: {platform.python_version()} ({platform.platform()})",
        f"PyTorch: {torch.__version__}",
        f"CUDA available: {torch.cuda.is_available()}",
    ]
    for i in range(torch.cuda.device_count()):
        lines.append(f"GPU {i}: {torch.cuda.get_device_name(i)}")
    try:
        import torchvision

        lines.append(f"torchvision: {torchvision.__version__}")
    except Exception as err:  # noqa: BLE001 - informational only
        lines.append(f"torchvision: unavailable ({err})")
    return "\n".join(lines)


def check_output_dir(path: str) -> None:
    """Fail before any work when OUTPUT_DIR cannot be written (not after hours of training)."""
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".vlprompt-write-test-{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as err:
        raise UserPermissionError(
            f"OUTPUT_DIR {path!r} is not writable ({err.strerror or err}); pass another --output-dir"
        ) from err


def run(args: argparse.Namespace, on_trainer: Callable[[Any], None] | None = None):
    """Build the trainer for ``args`` and train or evaluate it; returns the trainer.

    The output folder is locked for the run (one run per folder), and ``run.json`` is written last,
    after the log is on disk, so a present record means every output is complete. ``on_trainer`` is
    called with the trainer as soon as it exists (the command line asks it where a Ctrl-C stopped).
    """
    from vlprompt.compat import build_trainer

    setup_console_logging()  # warnings before the log file exists (a stale lock) print as "Warning: ..."
    cfg = setup_cfg(args)
    check_output_dir(cfg.OUTPUT_DIR)
    running_distributed = distributed.init_distributed(cfg.USE_CUDA)
    lock = None
    log_file = None
    try:
        if cfg.OUTPUT_DIR and distributed.is_main_process():
            lock = acquire_run_lock(cfg.OUTPUT_DIR)
        if not distributed.is_main_process():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - only rank 0 prints and logs
        if cfg.SEED >= 0:
            log.info(f"Setting fixed seed: {cfg.SEED}")
            set_random_seed(cfg.SEED)
        started = utc_now()
        log_file = setup_logger(cfg.OUTPUT_DIR) if distributed.is_main_process() else None
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print_args(args, cfg)
        log.info("Collecting env info ...")
        log.info(f"** System info **\n{env_info()}\n")
        trainer = build_trainer(cfg)
        trainer.resume_anyway = bool(getattr(args, "resume_anyway", False))
        if on_trainer is not None:
            on_trainer(trainer)
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
        elif not args.no_train:
            trainer.train()
        if getattr(trainer, "dm", None) is not None and distributed.is_main_process():
            report_skipped_images(trainer.dm)  # DATALOADER.SKIP_CORRUPT_IMAGES: the count, once, at the end
        if getattr(trainer, "test_results", None) is not None and cfg.OUTPUT_DIR and distributed.is_main_process():
            sync_log()  # every printed line on disk before the record says the run is complete
            write_run_record(
                cfg, trainer, eval_only=args.eval_only, model_dir=args.model_dir, load_epoch=args.load_epoch,
                started=started, log_file=log_file,
            )
        return trainer
    finally:
        teardown_logger()
        if lock is not None:
            lock.release()
        if running_distributed:
            distributed.shutdown_distributed()
            if not distributed.is_main_process():
                sys.stdout.close()
                sys.stdout = sys.__stdout__


def command(argv: Sequence[str] | None = None, program: str = "train.py"):
    """``main`` the command-line way: a user's mistake prints one message to stderr and exits 2;
    Ctrl-C prints one line saying where the run stopped and that the same command resumes, and exits
    130; programming errors keep their traceback (``VLPROMPT_DEBUG=1`` shows every traceback)."""
    args = build_parser().parse_args(argv)
    built: dict[str, Any] = {}

    def resume_hint() -> str:
        trainer = built.get("trainer")
        hint = getattr(trainer, "interruption_hint", None)
        if callable(hint):
            return hint()
        return "stopped before training started; run the same command again to start"

    return run_cli(lambda: run(args, on_trainer=lambda trainer: built.update(trainer=trainer)),
                   program=program, resume_hint=resume_hint)


def main(argv: Sequence[str] | None = None):
    """Entry point of ``train.py`` and the ``vlprompt-train`` command.

    Without ``argv`` (a command line: the flags come from ``sys.argv``) errors are reported the
    command-line way (:func:`command`); with an argument list (scripts, tests) it returns the trainer
    and raises like any function.
    """
    if argv is None:
        return command()
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
