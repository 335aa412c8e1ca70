"""Multi-process training with torchrun (gloo on CPU): 2 processes train the same model as 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO_ROOT, config_file

from vlprompt.engine.checkpoint import load_checkpoint


def torchrun(nproc: int, root: str, backbone: str, out: Path, trainer: str = "CoOp") -> subprocess.CompletedProcess:
    config = "trainers/CoOp/vit_b16.yaml" if trainer == "CoOp" else "trainers/CoCoOp/vit_b16_c4_ep10_batch1.yaml"
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        str(REPO_ROOT / "train.py"), "--root", root, "--seed", "3", "--trainer", trainer,
        "--dataset-config-file", config_file("datasets/oxford_pets.yaml"), "--config-file", config_file(config),
        "--output-dir", str(out),
        # deterministic transforms, so the only randomness is the (shared, seeded) sampling order
        "INPUT.TRANSFORMS", "['center_crop', 'normalize']",
        "MODEL.BACKBONE.NAME", backbone, "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "4",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "0", "OPTIM.LR", "0.05",
        f"TRAINER.{trainer.upper()}.N_CTX", "4", f"TRAINER.{trainer.upper()}.PREC", "fp32",
    ]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(args, capture_output=True, text=True, timeout=400, env=env, cwd=out.parent)


def test_two_processes_match_one(pets_root, tiny_vit, tmp_path):
    one = torchrun(1, pets_root, tiny_vit, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, pets_root, tiny_vit, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]

    ckpt_one = load_checkpoint(str(tmp_path / "one" / "prompt_learner" / "model.pth.tar-2"))
    ckpt_two = load_checkpoint(str(tmp_path / "two" / "prompt_learner" / "model.pth.tar-2"))
    assert torch.allclose(ckpt_one["state_dict"]["ctx"], ckpt_two["state_dict"]["ctx"], atol=1e-5)
    assert not torch.equal(ckpt_two["state_dict"]["ctx"], torch.zeros_like(ckpt_two["state_dict"]["ctx"]))
    record_one = json.loads((tmp_path / "one" / "run.json").read_text())
    record_two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record_one["metrics"]["accuracy"] == record_two["metrics"]["accuracy"]

    # rank 0 alone writes: one log file, one checkpoint, and the training lines appear once
    assert sorted(p.name for p in (tmp_path / "two").glob("log.txt*")) == ["log.txt"]
    log = (tmp_path / "two" / "log.txt").read_text()
    assert log.count("Finish training") == 1
    assert log.count("epoch [2/2] batch [5/5]") == 1  # 20 images, global batch 4 = 2 per process
    assert sorted(p.name for p in (tmp_path / "two" / "prompt_learner").iterdir()) == ["checkpoint", "model.pth.tar-2"]
