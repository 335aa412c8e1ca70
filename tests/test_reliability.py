"""Fault injection and bad input: a run SIGKILLed anywhere and restarted with the same command ends
identical to an uninterrupted one; bad input fails early with a message naming the thing and the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, train_args

from vlprompt.cli import main
from vlprompt.engine.checkpoint import load_checkpoint

# Runs train.py's main in a subprocess that SIGKILLs itself at the n-th occurrence of a point:
# "batch" (a training step), "save" (half-way through writing a checkpoint file), "test" (an eval batch).
DRIVER = r"""
import os, signal, sys
point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
import torch
import vlprompt
from vlprompt.cli import main
from vlprompt.engine import checkpoint, evaluation
from vlprompt.trainers.coop import CoOp

seen = [0]
def reached():
    seen[0] += 1
    return seen[0] == nth

def die():  # no flush first: what reached log.txt is what a real kill leaves
    os.kill(os.getpid(), signal.SIGKILL)

if point == "batch":
    step = CoOp.forward_backward
    def forward_backward(self, batch):
        if reached():
            die()
        return step(self, batch)
    CoOp.forward_backward = forward_backward
elif point == "save":
    real_save = torch.save
    def torn_save(obj, handle, *a, **k):
        if reached():
            import io
            buffer = io.BytesIO()
            real_save(obj, buffer)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            die()
        return real_save(obj, handle, *a, **k)
    checkpoint.torch.save = torn_save
elif point == "test":
    process = evaluation.Classification.process
    def killing_process(self, *a, **k):
        if reached():
            die()
        return process(self, *a, **k)
    evaluation.Classification.process = killing_process
main(argv)
"""


def coop_run(root, out, backbone, *extra):
    return train_args(
        root, out, "CoOp", "trainers/CoOp/vit_b16.yaml", "--seed", "2",
        "MODEL.BACKBONE.NAME", backbone, "OPTIM.MAX_EPOCH", "3", "DATASET.NUM_SHOTS", "4",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "5",
        "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32", "OPTIM.LR", "0.05", *extra,
    )


@pytest.fixture(scope="module")
def uninterrupted(pets_root, tiny_vit, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    trainer = main(coop_run(pets_root, out, tiny_vit))
    return trainer.test_results, load_checkpoint(str(out / "prompt_learner" / "model.pth.tar-3"))


@pytest.mark.parametrize(
    ("point", "nth"),
    [
        ("batch", 7),  # mid-epoch 2 (5 batches per epoch)
        ("save", 2),  # half-way through writing epoch 2's resume point
        ("save", 3),  # half-way through writing the final checkpoint
        ("test", 2),  # during the final test
    ],
)
def test_killed_anywhere_then_rerun_ends_identical(pets_root, tiny_vit, tmp_path, uninterrupted, point, nth):
    args = coop_run(pets_root, tmp_path, tiny_vit)
    killed = subprocess.run([sys.executable, "-c", DRIVER, point, str(nth), *args], capture_output=True,
                            text=True, timeout=300, cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "run.json").exists()
    if point == "batch":  # the log holds every line printed before the kill (it is line-buffered)
        assert (tmp_path / "log.txt").read_text().splitlines()[-1].startswith("epoch [1/3] batch [5/5] ")

    resumed = main(args)  # the same command again: resumes from the output directory
    expected_results, expected_checkpoint = uninterrupted
    assert resumed.test_results == expected_results
    final = load_checkpoint(str(tmp_path / "prompt_learner" / "model.pth.tar-3"))
    assert torch.equal(final["state_dict"]["ctx"], expected_checkpoint["state_dict"]["ctx"])
    assert final["optimizer"]["state"][0]["momentum_buffer"].equal(
        expected_checkpoint["optimizer"]["state"][0]["momentum_buffer"])
    assert sorted(os.listdir(tmp_path / "prompt_learner")) == ["checkpoint", "model.pth.tar-3"]
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "complete"


def test_nan_loss_stops_with_step_and_last_good_checkpoint(pets_root, tiny_vit, tmp_path, monkeypatch):
    from vlprompt.trainers.coop import CoOpCLIP

    forward = CoOpCLIP.forward
    calls = [0]

    def poisoned(self, image):
        calls[0] += 1
        logits = forward(self, image)
        return logits * float("nan") if calls[0] == 8 else logits  # epoch 2, batch 3

    monkeypatch.setattr(CoOpCLIP, "forward", poisoned)
    with pytest.raises(FloatingPointError) as info:
        main(coop_run(pets_root, tmp_path, tiny_vit))
    message = str(info.value)
    assert "Loss is infinite or NaN!" in message
    assert "epoch 2, batch 3 (step 8)" in message
    assert str(tmp_path / "prompt_learner" / "resume.pth.tar") in message
    assert load_checkpoint(str(tmp_path / "prompt_learner" / "resume.pth.tar"))["epoch"] == 1


def test_unwritable_output_dir_fails_before_any_work(pets_root, tiny_vit, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="is not writable.*pass another --output-dir"):
        main(coop_run(pets_root, blocker / "out", tiny_vit))


def test_missing_dataset_root_is_named(tiny_vit, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'DATASET.ROOT ".*nowhere" does not exist'):
        main(coop_run(str(tmp_path / "nowhere"), tmp_path / "out", tiny_vit))


def test_unknown_trainer_lists_valid_names(pets_root, tiny_vit, tmp_path):
    args = coop_run(pets_root, tmp_path, tiny_vit)
    args[args.index("CoOp")] = "CoOP"
    with pytest.raises(KeyError, match='"CoOP" is not a registered trainer name. Did you mean "CoOp"'):
        main(args)


def test_unknown_config_key_suggests_the_closest(pets_root, tiny_vit, tmp_path):
    from vlprompt.engine.config import ConfigError

    with pytest.raises(ConfigError, match="OPTIM.MAX_EPOCH"):
        main(coop_run(pets_root, tmp_path, tiny_vit, "OPTIM.MAX_EPOCHS", "2"))


# Sends Ctrl-C's SIGINT to its whole process group (DataLoader workers included) at the n-th training step.
INTERRUPTER = r"""
import os, signal, sys, time
nth = int(sys.argv[1])
sys.argv = ["train.py", *sys.argv[2:]]
import vlprompt
from vlprompt.cli import main
from vlprompt.trainers.coop import CoOp

seen = [0]
step = CoOp.forward_backward
def forward_backward(self, batch):
    seen[0] += 1
    if seen[0] == nth:
        os.killpg(os.getpgid(0), signal.SIGINT)
        time.sleep(5)  # the interrupt arrives during this step
    return step(self, batch)
CoOp.forward_backward = forward_backward
main()
"""


def test_ctrl_c_with_loader_workers_is_one_line_exit_130_and_the_same_command_resumes(pets_root, tiny_vit,
                                                                                      tmp_path):
    args = coop_run(pets_root, tmp_path / "interrupted", tiny_vit, "DATALOADER.NUM_WORKERS", "2")
    env = {key: value for key, value in os.environ.items() if key != "VLPROMPT_DEBUG"}
    interrupted = subprocess.run([sys.executable, "-c", INTERRUPTER, "7", *args], capture_output=True, text=True,
                                 timeout=300, cwd=REPO_ROOT, start_new_session=True, env=env)
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert interrupted.stderr.splitlines() == [
        ("train.py: interrupted; stopped in epoch 2/3, batch 2/5; run the same command again to resume from the "
        "last finished epoch")]
    assert not (tmp_path / "interrupted" / ".vlprompt.lock").exists()

    resumed = main(args)
    straight = main(coop_run(pets_root, tmp_path / "straight", tiny_vit, "DATALOADER.NUM_WORKERS", "2"))
    assert resumed.start_epoch == 1
    assert resumed.test_results == straight.test_results
    assert torch.equal(load_checkpoint(str(tmp_path / "interrupted" / "prompt_learner" / "model.pth.tar-3"))[
        "state_dict"]["ctx"], load_checkpoint(str(tmp_path / "straight" / "prompt_learner" / "model.pth.tar-3"))[
        "state_dict"]["ctx"])
