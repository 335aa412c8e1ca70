"""The shape issue 14 asked for: one loader and one INPUT.SIZE check for every trainer, trainers that do
not import each other, checkpoint kinds declared by their methods, and the adapter as the only way in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import train_args

from vlprompt.cli import main
from vlprompt.errors import UserError
from vlprompt.modeling import adapter_for, create_clip
from vlprompt.modeling.prompt_checkpoints import CHECKPOINT_KINDS

TRAINERS_DIR = Path(__file__).resolve().parent.parent / "vlprompt" / "trainers"


@pytest.mark.parametrize("trainer,config,flags", [
    ("ZeroshotCLIP", "trainers/CoOp/vit_b16.yaml", ["--eval-only"]),
    ("LinearProbeCLIP", "trainers/LinearProbeCLIP/vit_b16.yaml", []),
    ("CoOp", "trainers/CoOp/vit_b16.yaml", []),
])
def test_every_trainer_checks_input_size_against_the_backbone(pets_root, tiny_vit, tmp_path, trainer, config, flags):
    with pytest.raises(UserError, match=r"INPUT.SIZE \(64, 64\) does not match .* 224"):
        main(train_args(pets_root, tmp_path / trainer, trainer, config, *flags, "MODEL.BACKBONE.NAME", tiny_vit,
                        "INPUT.SIZE", "(64, 64)", "DATALOADER.NUM_WORKERS", "0"))


def test_trainers_import_the_wing_and_the_engine_never_each_other():
    for path in sorted(TRAINERS_DIR.glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        others = sorted(name for name in imported if name.startswith(("vlprompt.trainers", "trainers")))
        assert others == [], f"{path.name} imports {others}"


def test_checkpoint_kinds_are_declared_by_their_methods_not_by_tpt():
    import vlprompt.trainers  # noqa: F401 - registers every method

    assert {"coop", "cocoop", "genpt"} <= set(CHECKPOINT_KINDS)
    declared_in = {name: kind.build.__module__ for name, kind in CHECKPOINT_KINDS.items()}
    assert declared_in["cocoop"] == "vlprompt.trainers.cocoop"
    assert declared_in["genpt"] == "vlprompt.trainers.genpt"
    tpt_source = (TRAINERS_DIR / "tpt.py").read_text()
    assert "register_checkpoint_kind" not in tpt_source and "ConditionalPromptLearner" not in tpt_source


def test_create_clip_gives_model_adapter_preprocess_and_tokenizer(tiny_vit):
    clip = create_clip(tiny_vit, precision="fp32")
    assert clip.adapter.family == "openai" and clip.precision == "fp32"
    assert clip.preprocess.size == 224 and clip.preprocess.interpolation == "bicubic"
    assert clip.tokenizer(["a dog"]).shape == (1, 77)
    assert clip.tokenizer.encode("big dog") == clip.tokenizer.encode("big") + clip.tokenizer.encode("dog")
    assert not any(p.requires_grad for p in clip.model.parameters())
    with pytest.raises(TypeError, match="not a model of a known CLIP family"):
        adapter_for(torch.nn.Linear(2, 2))
