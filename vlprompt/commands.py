"""The ``vlprompt`` command (and ``python -m vlprompt``): one entry point that finds everything.

``vlprompt COMMAND [ARGS ...]`` hands ``ARGS`` to the existing entry point of ``COMMAND`` (``train.py``'s,
``python -m vlprompt.check_data``'s, ...), named ``vlprompt COMMAND`` in its usage and errors. Every command
runs under :func:`vlprompt.errors.run_cli`: a user's mistake prints one line and exits 2. Config files given
as ``configs/...`` that do not exist from the working directory are the ones shipped inside vlprompt
(:mod:`vlprompt.resources`), so commands work from any folder after ``pip install``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vlprompt.engine.logging import setup_console_logging
from vlprompt.errors import UsageError, run_cli
from vlprompt.threads import apply_cpu_policy

PROG = "vlprompt"
# Flags of train.py whose value is a config file (resolved against the shipped configs).
CONFIG_FLAGS = ("--config-file", "--dataset-config-file")


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one line of help, and the function that runs it on its arguments."""

    name: str
    summary: str
    run: Callable[[list[str]], int]


# --------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def program_name(name: str, module: ModuleType | None = None) -> Iterator[None]:
    """While an existing entry point runs, its argparse usage and errors say ``name``: parsers without an
    explicit ``prog`` take it from ``sys.argv[0]``; a module's ``build_parser`` is wrapped to rename its
    parser."""
    saved_argv = sys.argv[:]
    sys.argv[:] = [name, *sys.argv[1:]]
    original = getattr(module, "build_parser", None) if module is not None else None
    if original is not None:

        def renamed_parser() -> argparse.ArgumentParser:
            parser = original()
            parser.prog = name
            return parser

        module.build_parser = renamed_parser
    try:
        yield
    finally:
        sys.argv[:] = saved_argv
        if original is not None:
            module.build_parser = original


def exit_status(result: object) -> int:
    """An entry point's return value as an exit status (``None``, a trainer or a list of runs mean 0)."""
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def resolve_config_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` of train.py with each ``--config-file``/``--dataset-config-file`` value that is a relative
    ``configs/...`` path missing from the working directory replaced by the shipped file."""
    from vlprompt.cli import build_parser
    from vlprompt.resources import resolve_config_path

    parser = build_parser()
    if any(token in ("-h", "--help") for token in argv):
        parser.epilog = train_choices()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(list(argv))
    resolved = list(argv)
    for flag in CONFIG_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        shipped = resolve_config_path(value)
        if shipped != value:
            resolved = replace_flag_value(resolved, value, shipped)
    return resolved


def train_choices() -> str:
    """What ``--trainer``, ``--dataset-config-file`` and ``--config-file`` take, for ``vlprompt train --help``."""
    from vlprompt.cli import register_plugins
    from vlprompt.compat import TRAINER_REGISTRY

    register_plugins()
    return (f"trainers: {', '.join(TRAINER_REGISTRY.registered_names())}\n"
            "configs: configs/datasets/<dataset>.yaml and configs/trainers/<trainer>/<name>.yaml, shipped with "
            f"vlprompt (`{PROG} list` shows them all, with the datasets and backbones)\n"
            "trailing KEY VALUE pairs set config keys last, e.g. DATASET.NUM_SHOTS 4 OPTIM.MAX_EPOCH 10")


def replace_flag_value(argv: list[str], value: str, new: str) -> list[str]:
    """``argv`` with the first option value ``value`` (``--flag value`` or ``--flag=value``) set to ``new``."""
    for i, token in enumerate(argv):
        if token == value and i > 0 and argv[i - 1].startswith("--"):
            return [*argv[:i], new, *argv[i + 1:]]
        if token.startswith("--") and token.endswith(f"={value}"):
            return [*argv[:i], token[: -len(value)] + new, *argv[i + 1:]]
    return argv


# -------------------------------------------------------------------------------------------- commands
def run_train(argv: list[str]) -> int:
    """``vlprompt train`` (and ``vlprompt-train``): train.py's flags; shipped configs found from anywhere."""
    from vlprompt import cli

    with program_name(f"{PROG} train"):
        if not argv:
            cli.build_parser().print_usage(sys.stderr)
            print(f"{PROG} train: error: nothing to run; e.g. {PROG} train --root DATA --trainer CoOp --config-file "
                  "configs/trainers/CoOp/rn50.yaml --dataset-config-file configs/datasets/oxford_pets.yaml "
                  "(--help lists every flag)", file=sys.stderr)
            return 2
        resolved = run_cli(lambda: resolve_config_flags(argv), program=f"{PROG} train")
        return exit_status(cli.command(resolved, program=f"{PROG} train"))


def train_main() -> int:
    """Console entry point ``vlprompt-train``: ``vlprompt train``."""
    setup_console_logging()
    run_cli(apply_cpu_policy, program=f"{PROG}-train")  # torch's threads for the CPUs this process is given
    return run_train(sys.argv[1:])


def delegate(name: str, module: str) -> Callable[[list[str]], int]:
    """A command that hands its arguments to ``module.main`` (imported when it runs), under its own name."""

    def run(argv: list[str]) -> int:
        entry = importlib.import_module(module)
        with program_name(f"{PROG} {name}", entry):
            return exit_status(run_cli(lambda: entry.main(argv), program=f"{PROG} {name}"))

    run.__doc__ = f"``{PROG} {name}``: ``{module}.main``."
    return run


run_check_data = delegate("check-data", "vlprompt.check_data")
run_tables = delegate("tables", "vlprompt.results.cli")
run_interpret = delegate("interpret", "vlprompt.interpret")
run_demo = delegate("demo", "vlprompt.demo")


def plot_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} plot",
        description="Draw the CoOp paper's few-shot figure (accuracy against shots, one PNG per dataset and "
                    "average.png) from the runs under output folders, with its table beside it as few_shot.md. "
                    'Needs matplotlib (pip install "vlprompt[tables]").',
    )
    parser.add_argument("roots", nargs="+", help="output folder(s) searched recursively for runs")
    parser.add_argument("--output-dir", default="figures", help="where the PNGs and few_shot.md go (default: figures)")
    parser.add_argument("--datasets", default=None, help="comma-separated datasets (DATASET.NAME) to draw, in order")
    parser.add_argument("--label-by", default=None, help="run fields or config keys naming a line (see vlprompt tables)")
    parser.add_argument("--metric", default=None, help="run metric to draw (default: accuracy)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any run could not be read")
    return parser


def run_plot(argv: list[str]) -> int:
    """``vlprompt plot``: ``vlprompt tables --protocol few_shot --plot DIR --output-dir DIR``."""
    args = plot_parser().parse_args(argv)
    forwarded = [*args.roots, "--protocol", "few_shot", "--plot", args.output_dir, "--output-dir", args.output_dir]
    for flag in ("datasets", "label_by", "metric"):
        if getattr(args, flag) is not None:
            forwarded += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.strict:
        forwarded.append("--strict")
    return run_tables(forwarded)


# ------------------------------------------------------------------------------------------------- tpt
# TPT's own flags (azshue/TPT, tpt_classification.py) → TRAINER.TPT keys; their defaults stay the config's.
TPT_KEYS = {
    "batch_size": "TRAINER.TPT.N_VIEWS", "tta_steps": "TRAINER.TPT.STEPS", "selection_p": "TRAINER.TPT.SELECTION_P",
    "lr": "TRAINER.TPT.LR", "ctx_init": "TRAINER.TPT.CTX_INIT", "n_ctx": "TRAINER.TPT.N_CTX",
    "load": "TRAINER.TPT.LOAD", "workers": "DATALOADER.NUM_WORKERS", "print_freq": "TRAINER.TPT.PRINT_FREQ",
}  # fmt: skip
# Backbones with a shipped TPT config (configs/trainers/TPT/<stem>.yaml); others start from RN50's.
TPT_CONFIGS = {"RN50": "rn50", "ViT-B/16": "vit_b16"}
TPT_DEFAULT_ARCH = "RN50"


def tpt_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} tpt",
        description="Test-time prompt tuning (TPT) with the TPT repository's flags (underscore or dash spellings). "
                    "Flags left out keep the reference's values from configs/trainers/TPT/. Runs train.py "
                    "--trainer TPT; trailing KEY VALUE pairs are passed on (e.g. TRAINER.TPT.BATCH_IMAGES 8).",
        epilog="e.g. vlprompt tpt --root $DATA --test_sets A/R -a ViT-B/16 --ctx_init a_photo_of_a",
    )
    add = parser.add_argument
    add("--root", required=True, help="the folder holding the datasets (TPT's positional data argument)")
    add("--test-sets", "--test_sets", dest="test_sets", default=None,
        help="/-separated set ids (I, A, V, R, K, Flower102, DTD, Pets, Cars, UCF101, Caltech101, Food101, SUN397, "
             "Aircraft, eurosat) or dataset names; required unless --dataset-config-file is given")
    add("--dataset-config-file", default="", help="one dataset's config (configs/datasets/<name>.yaml) instead of --test-sets")
    add("-a", "--arch", default=None,
        help=f"CLIP backbone: a name (`vlprompt list backbones`) or a weights file (default: {TPT_DEFAULT_ARCH})")
    add("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
        help="views per test image, the original included (default: 64)")
    add("--tta-steps", "--tta_steps", dest="tta_steps", type=int, default=None,
        help="prompt updates per test image (default: 1)")
    add("--selection-p", "--selection_p", dest="selection_p", type=float, default=None,
        help="fraction of the most confident views kept (default: 0.1)")
    add("--lr", type=float, default=None, help="AdamW learning rate (default: 5e-3)")
    add("--ctx-init", "--ctx_init", dest="ctx_init", default=None,
        help='words the prompt starts from, "_" for spaces (default: a_photo_of_a; "" for N_CTX random vectors)')
    add("--n-ctx", "--n_ctx", dest="n_ctx", type=int, default=None,
        help="random context vectors when --ctx-init is empty (default: 4)")
    add("--load", default=None, help="start from a CoOp or CoCoOp checkpoint file or run folder")
    add("--cocoop", action="store_true", help="--load is a CoCoOp checkpoint (checked; the kind is read from its keys)")
    add("--model-dir", default="", help="start from this run folder's checkpoint (with --load-epoch), as train.py")
    add("--load-epoch", type=int, default=None, help="epoch of --model-dir (default: model-best, else the latest)")
    add("--gpu", default=None,
        help="GPU index (sets CUDA_VISIBLE_DEVICES), or -1/cpu for the CPU (default: the first GPU, else the CPU)")
    add("-j", "--workers", type=int, default=None, help="data-loading workers (default: 4)")
    add("-p", "--print-freq", "--print_freq", dest="print_freq", type=int, default=None,
        help="images between progress lines (default: 200)")
    add("--resolution", type=int, default=None, help="input size; must match the backbone's (default: 224)")
    add("--seed", type=int, default=0, help="random seed (default: 0, as TPT)")
    add("--tpt", action="store_true", help="accepted for TPT's command lines; test-time tuning is always on")
    add("--output-dir", default="",
        help="where log.txt, predictions and run.json go (default: output/tpt/<backbone>/<start>/<sets>/seed<seed>, "
             "as scripts/tpt)")
    add("--config-file", default="", help="TPT config file (default: configs/trainers/TPT/<rn50|vit_b16>.yaml)")
    add("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs applied last")
    return parser


def tpt_train_argv(args: argparse.Namespace) -> list[str]:
    """train.py's arguments for a ``vlprompt tpt`` command line (checked first: a mistake is one error)."""
    from vlprompt.resources import shipped_config

    if not args.test_sets and not args.dataset_config_file:
        raise UsageError("vlprompt tpt needs --test-sets (e.g. A/R/V/K/I) or --dataset-config-file")
    if args.load and args.model_dir:
        raise UsageError(f'--load "{args.load}" and --model-dir "{args.model_dir}" both name a start; give one')
    if args.cocoop:
        check_cocoop_start(args.load or args.model_dir, args.load_epoch)
    arch = args.arch or TPT_DEFAULT_ARCH
    config = args.config_file or str(shipped_config(f"trainers/TPT/{tpt_config_stem(arch)}.yaml"))
    # The shipped configs differ only in the backbone: another one is set on top of RN50's.
    custom = args.arch and (args.config_file or arch not in TPT_CONFIGS)
    opts = ["MODEL.BACKBONE.NAME", arch] if custom else []
    for flag, key in TPT_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            opts += [key, str(value)]
    if args.test_sets:
        opts += ["TRAINER.TPT.TEST_SETS", args.test_sets]
    if args.resolution is not None:
        opts += ["INPUT.SIZE", f"({args.resolution}, {args.resolution})"]
    opts += select_gpu(args.gpu)
    output_dir = args.output_dir or default_tpt_output(args)
    argv = ["--root", args.root, "--trainer", "TPT", "--config-file", config, "--seed", str(args.seed),
            "--output-dir", output_dir]
    if args.dataset_config_file:
        argv += ["--dataset-config-file", args.dataset_config_file]
    if args.model_dir:  # as scripts/tpt: a run folder is loaded the way train.py evaluates one
        argv += ["--eval-only", "--model-dir", args.model_dir]
        if args.load_epoch is not None:
            argv += ["--load-epoch", str(args.load_epoch)]
    elif args.load_epoch is not None:
        raise UsageError("--load-epoch picks an epoch of --model-dir; give --model-dir too")
    return [*argv, *opts, *(args.opts or [])]


def check_cocoop_start(source: str, epoch: int | None) -> None:
    """``--cocoop``: the start must be a CoCoOp checkpoint (TPT's flag chose the loader; ours reads the keys)."""
    if not source:
        raise UsageError("--cocoop starts from a CoCoOp checkpoint: give it with --load FILE (or --model-dir)")
    import vlprompt.trainers.tpt  # noqa: F401 - registers the CoCoOp checkpoint kind
    from vlprompt.tta.sources import context_from_checkpoint

    start = context_from_checkpoint(source, None, epoch)
    if start.kind != "cocoop":
        raise UsageError(f"--cocoop: {start.describe()} is a {start.kind} checkpoint, not a CoCoOp one "
                         "(ctx + meta_net.*); drop --cocoop to start from it as it is")


def select_gpu(gpu: str | None) -> list[str]:
    """TPT's ``--gpu``: an index selects that GPU (through ``CUDA_VISIBLE_DEVICES``, set before CUDA starts);
    ``-1``/``cpu`` runs on the CPU. Returns the config pairs it needs."""
    if gpu is None:
        return []
    if gpu.strip().lower() in ("-1", "cpu"):
        return ["USE_CUDA", "False"]
    if not gpu.strip().isdigit():
        raise UsageError(f'--gpu "{gpu}": give a GPU index (0, 1, ...) or -1 for the CPU')
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    index = int(gpu)
    if visible is not None and visible.strip():
        devices = [d.strip() for d in visible.split(",") if d.strip()]
        if index >= len(devices):
            raise UsageError(f"--gpu {index}: CUDA_VISIBLE_DEVICES={visible} makes {len(devices)} GPU(s) visible; "
                             f"give an index below {len(devices)}")
        chosen = devices[index]
    else:
        chosen = str(index)
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen
    return []


def tpt_config_stem(arch: str) -> str:
    """The shipped TPT config for a backbone (``rn50``, ``vit_b16``); RN50's for any other."""
    return TPT_CONFIGS.get(arch, TPT_CONFIGS[TPT_DEFAULT_ARCH])


def default_tpt_output(args: argparse.Namespace) -> str:
    """``output/tpt/<backbone>/<start>/<sets>/seed<seed>``: scripts/tpt's layout, relative to the working folder."""
    if args.config_file and not args.arch:
        backbone = Path(args.config_file).stem
    else:
        arch = args.arch or TPT_DEFAULT_ARCH
        backbone = TPT_CONFIGS.get(arch) or re.sub(r"[^0-9A-Za-z]+", "_", Path(arch).stem).strip("_").lower()
    start = "cocoop" if args.cocoop else "coop" if (args.load or args.model_dir) else "words"
    sets = args.test_sets or Path(args.dataset_config_file).stem
    return os.path.join("output", "tpt", backbone, start, sets.replace("/", "_"), f"seed{args.seed}")


def run_tpt(argv: list[str]) -> int:
    args = tpt_parser().parse_args(argv)
    train_argv = run_cli(lambda: tpt_train_argv(args), program=f"{PROG} tpt")
    return run_train(train_argv)


# ------------------------------------------------------------------------------------------------ list
LIST_CHOICES = ("trainers", "datasets", "backbones", "configs")


def list_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} list",
        description="List the registered trainers and datasets, the CLIP backbone names and the shipped config files.",
    )
    parser.add_argument("what", nargs="*", metavar="WHAT", help=f"any of {', '.join(LIST_CHOICES)} (default: all)")
    return parser


def list_sections(what: Sequence[str] = LIST_CHOICES) -> str:
    """The text ``vlprompt list`` prints."""
    from vlprompt.cli import register_plugins
    from vlprompt.compat import DATASET_REGISTRY, TRAINER_REGISTRY
    from vlprompt.resources import configs_dir, shipped_configs

    register_plugins()
    configs = shipped_configs()
    sections = []
    if "trainers" in what:
        lines = ["Trainers (--trainer NAME; configs in configs/trainers/NAME/):"]
        for name in TRAINER_REGISTRY.registered_names():
            count = sum(config.startswith(f"trainers/{name}/") for config in configs)
            lines.append(f"  {name:<18}{f'{count} configs' if count else ''}".rstrip())
        sections.append(lines)
    if "datasets" in what:
        by_name = dataset_configs(configs)
        lines = ["Datasets (DATASET.NAME, set by --dataset-config-file):"]
        lines += [f"  {name:<22}{by_name.get(name, '')}".rstrip() for name in DATASET_REGISTRY.registered_names()]
        sections.append(lines)
    if "backbones" in what:
        sections.append(backbone_lines())
    if "configs" in what:
        sections.append([f"Configs (--config-file / --dataset-config-file; shipped in {configs_dir()}):",
                         *(f"  configs/{config}" for config in configs)])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def dataset_configs(configs: Sequence[str]) -> dict[str, str]:
    """DATASET.NAME → the shipped ``configs/datasets/*.yaml`` that sets it."""
    import yaml

    from vlprompt.resources import configs_dir

    found: dict[str, str] = {}
    for config in configs:
        if config.startswith("datasets/"):
            with open(configs_dir() / config, encoding="utf-8") as handle:
                name = ((yaml.safe_load(handle) or {}).get("DATASET") or {}).get("NAME")
            if name:
                found.setdefault(name, f"configs/{config}")
    return found


def backbone_lines() -> list[str]:
    from vlprompt.modeling.backbones.openai import BUNDLED_WEIGHTS, clip_model_urls, clip_weights_dir, offline

    folder = clip_weights_dir()
    absent = "absent" + (" (VLPROMPT_OFFLINE is set: no download)" if offline() else " (downloaded on first use)")
    lines = [f"Backbones (MODEL.BACKBONE.NAME, or the path of a weights file; looked for in {folder}):"]
    for name, url in clip_model_urls().items():
        lines.append(f"  {name:<18}{'present' if (folder / os.path.basename(url)).is_file() else absent}")
    lines += [f"  {name:<18}bundled with vlprompt" for name in BUNDLED_WEIGHTS]
    return lines


def run_list(argv: list[str]) -> int:
    parser = list_parser()
    args = parser.parse_args(argv)
    unknown = [what for what in args.what if what not in LIST_CHOICES]
    if unknown:
        parser.error(f"unknown {', '.join(unknown)}; choose from {', '.join(LIST_CHOICES)}")
    text = run_cli(lambda: list_sections(args.what or LIST_CHOICES), program=f"{PROG} list")
    sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------------------------------ main
COMMANDS: tuple[Command, ...] = (
    Command("train", "train or evaluate a method: train.py's flags (CoOp-compatible)", run_train),
    Command("tpt", "test-time prompt tuning with the TPT repository's flags", run_tpt),
    Command("check-data", "check dataset folders before a long run", run_check_data),
    Command("tables", "paper tables from output folders (few-shot, base-to-new, cross-dataset, DG, TPT)", run_tables),
    Command("plot", "the few-shot figure from output folders", run_plot),
    Command("interpret", "nearest words of a learned prompt's context vectors", run_interpret),
    Command("demo", "every method on the toy world with the bundled micro CLIP (CPU, minutes)", run_demo),
    Command("list", "trainers, datasets, backbones and shipped configs", run_list),
)


def build_parser() -> argparse.ArgumentParser:
    import vlprompt

    width = max(len(command.name) for command in COMMANDS)
    listing = "\n".join(f"  {command.name:<{width}}  {command.summary}" for command in COMMANDS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] [--version] COMMAND [ARGS ...]",
        description="Prompt tuning for CLIP-like models (CoOp, CoCoOp, GenPT, TPT, linear probe).",
        epilog=f"commands:\n{listing}\n\n`{PROG} COMMAND --help` lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {vlprompt.__version__}")
    parser.add_argument("command", choices=[command.name for command in COMMANDS], metavar="COMMAND",
                        help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``vlprompt COMMAND [ARGS ...]``; returns the command's exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_console_logging()  # library messages (e.g. which shipped config is used) reach the console
    run_cli(apply_cpu_policy, program=PROG)  # torch's threads for the CPUs this process is given
    command = next(command for command in COMMANDS if command.name == args.command)
    return command.run(list(args.args))


if __name__ == "__main__":
    sys.exit(main())
