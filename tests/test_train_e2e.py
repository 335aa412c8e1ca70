"""train.py end to end (in process) on the synthetic OxfordPets tree with tiny CLIPs."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from conftest import train_args

from vlprompt.cli import main
from vlprompt.engine.checkpoint import load_checkpoint

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "20"]


def coop_args(root, out, backbone, *extra, epochs=3, seed="1", flags=()):
    return train_args(
        root, out, "CoOp", "trainers/CoOp/vit_b16.yaml", "--seed", seed, *flags,
        "MODEL.BACKBONE.NAME", backbone, "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "4",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32",
        "OPTIM.LR", "0.05", *FAST, *extra,
    )


def result_block(text: str) -> dict[str, float]:
    block = text[text.rindex("=> result"):]
    return {k: float(v.replace(",", "")) for k, v in re.findall(r"\* (\w+): ([\d,.]+)", block)}


@pytest.mark.parametrize("kind", ["vit", "rn", "rn_torchscript"])
def test_zeroshot_clip_eval_only_prints_result_block_and_writes_log(pets_root, tiny_clip_files, tmp_path, capsys, kind):
    if kind == "rn_torchscript":
        from vlprompt.tiny_clip import save_tiny_clip

        weights = save_tiny_clip(tmp_path / "tiny_rn_jit.pt", kind="rn", fmt="torchscript")
    else:
        weights = tiny_clip_files[kind]
    out = tmp_path / "zs"
    trainer = main(train_args(
        pets_root, out, "ZeroshotCLIP", "trainers/CoOp/rn50.yaml", "--eval-only",
        "MODEL.BACKBONE.NAME", str(weights), *FAST,
    ))
    printed = capsys.readouterr().out
    assert "Loading trainer: ZeroshotCLIP" in printed
    assert "a photo of a abyssinian, a type of pet." in printed
    block = result_block(printed)
    assert block["total"] == 20  # the synthetic test split: 5 classes x 4 images
    assert block["accuracy"] == pytest.approx(100.0 * block["correct"] / 20, abs=0.05)
    assert "* error:" in printed and "* macro_f1:" in printed
    log = (out / "log.txt").read_text()
    assert "=> result" in log and "** Config **" in log
    record = json.loads((out / "run.json").read_text())
    assert record["trainer"] == "ZeroshotCLIP" and record["protocol"] == "zeroshot"
    assert record["deterministic"] is True and record["device"] == "cpu"
    assert record["metrics"]["accuracy"] == pytest.approx(trainer.test_results["accuracy"])


def test_zeroshot_clip2_ensembles_eight_templates(pets_root, tiny_vit, tmp_path, capsys):
    main(train_args(pets_root, tmp_path / "zs2", "ZeroshotCLIP2", "trainers/CoOp/rn50.yaml", "--eval-only",
                    "MODEL.BACKBONE.NAME", tiny_vit, *FAST))
    assert "Prompt ensembling (n=8)" in capsys.readouterr().out


def test_second_run_writes_timestamped_log(pets_root, tiny_vit, tmp_path):
    args = train_args(pets_root, tmp_path, "ZeroshotCLIP", "trainers/CoOp/rn50.yaml", "--eval-only",
                      "MODEL.BACKBONE.NAME", tiny_vit, *FAST)
    main(args)
    main(args)
    logs = sorted(p.name for p in tmp_path.glob("log.txt*"))
    assert logs[0] == "log.txt" and len(logs) == 2 and logs[1].startswith("log.txt-")


def test_missing_weights_error_names_file_and_directory(pets_root, tmp_path, monkeypatch):
    from vlprompt.clip_backbone import ClipWeightsNotFoundError

    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    with pytest.raises(ClipWeightsNotFoundError) as info:
        main(train_args(pets_root, tmp_path / "out", "ZeroshotCLIP", "trainers/CoOp/vit_b16.yaml", "--eval-only",
                        *FAST))
    message = str(info.value)
    assert "ViT-B-16.pt" in message and str(tmp_path / "weights") in message


def test_coop_trains_saves_reference_layout_and_eval_reproduces(pets_root, tiny_vit, tmp_path, capsys):
    out = tmp_path / "coop"
    trainer = main(coop_args(pets_root, out, tiny_vit, "TRAIN.PRINT_FREQ", "1"))
    printed = capsys.readouterr().out
    assert "Finish training" in printed and "Deploy the last-epoch model" in printed
    lines = re.findall(r"epoch \[(\d)/3\] batch \[(\d+)/(\d+)\] time [\d.]+ \([\d.]+\) data [\d.]+ \([\d.]+\) "
                       r"loss [\d.]+ \([\d.]+\) acc [\d.]+ \([\d.]+\) lr (\S+) eta \d+:\d\d:\d\d", printed)
    assert len(lines) == 3 * 5  # 20 few-shot images / batch 4, every batch printed
    # As Dassl prints it: the last batch of an epoch shows the LR after the epoch's scheduler step,
    # i.e. the next epoch's (warm-up 1e-5 in epoch 1, then cosine from the full LR shifted by one epoch).
    last_of_epoch = [float(lr) for epoch, batch, total, lr in lines if batch == total]
    assert last_of_epoch == pytest.approx([0.05, 0.05 * 0.5 * (1 + math.cos(math.pi / 3)),
                                           0.05 * 0.5 * (1 + math.cos(2 * math.pi / 3))])
    assert {float(lr) for epoch, batch, total, lr in lines if epoch == "1" and batch != total} == {1e-5}
    folder = out / "prompt_learner"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model.pth.tar-3"]
    assert (folder / "checkpoint").read_text().strip() == "model.pth.tar-3"
    checkpoint = torch.load(folder / "model.pth.tar-3", weights_only=True)
    assert list(checkpoint["state_dict"]) == ["ctx", "token_prefix", "token_suffix"]
    assert checkpoint["state_dict"]["ctx"].shape == (4, 64) and checkpoint["epoch"] == 3
    trained_accuracy = trainer.test_results["accuracy"]

    evaluated = main(coop_args(pets_root, tmp_path / "eval", tiny_vit,
                               flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "3")))
    printed = capsys.readouterr().out
    assert f'Loading weights to prompt_learner from "{folder / "model.pth.tar-3"}" (epoch = 3)' in printed
    assert evaluated.test_results["accuracy"] == trained_accuracy


def test_coop_updates_only_the_context_and_lowers_the_loss(pets_root, tiny_vit, tmp_path):
    from vlprompt.cli import build_parser, setup_cfg
    from vlprompt.compat import build_trainer

    cfg = setup_cfg(build_parser().parse_args(coop_args(pets_root, tmp_path, tiny_vit, epochs=30)))
    torch.manual_seed(0)
    trainer = build_trainer(cfg)
    frozen = {k: v.clone() for k, v in trainer.model.state_dict().items() if "prompt_learner" not in k}
    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2  # no LR step inside forward_backward
    for group in trainer.optim.param_groups:
        group["lr"] = 0.05
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(15)]
    assert losses[-1] < losses[0] - 0.05
    after = trainer.model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_killed_and_resumed_run_ends_identical(pets_root, tiny_vit, tmp_path, monkeypatch):
    from vlprompt.engine.trainer import TrainerX

    reference = main(coop_args(pets_root, tmp_path / "straight", tiny_vit))

    original = TrainerX.run_epoch

    def crash_in_second_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        original(self)

    monkeypatch.setattr(TrainerX, "run_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(coop_args(pets_root, tmp_path / "killed", tiny_vit))
    assert (tmp_path / "killed" / "prompt_learner" / "resume.pth.tar").is_file()
    monkeypatch.setattr(TrainerX, "run_epoch", original)
    resumed = main(coop_args(pets_root, tmp_path / "killed", tiny_vit))

    assert resumed.start_epoch == 1
    assert not (tmp_path / "killed" / "prompt_learner" / "resume.pth.tar").exists()
    straight = load_checkpoint(str(tmp_path / "straight" / "prompt_learner" / "model.pth.tar-3"))
    again = load_checkpoint(str(tmp_path / "killed" / "prompt_learner" / "model.pth.tar-3"))
    assert torch.equal(straight["state_dict"]["ctx"], again["state_dict"]["ctx"])
    assert straight["optimizer"]["param_groups"][0]["lr"] == again["optimizer"]["param_groups"][0]["lr"]
    assert resumed.test_results == reference.test_results


def test_seed_zero_is_honoured_and_reproducible(pets_root, tiny_vit, tmp_path, capsys):
    first = main(coop_args(pets_root, tmp_path / "a", tiny_vit, epochs=1, seed="0"))
    assert "Setting fixed seed: 0" in capsys.readouterr().out
    second = main(coop_args(pets_root, tmp_path / "b", tiny_vit, epochs=1, seed="0"))
    ctx_a = load_checkpoint(str(tmp_path / "a" / "prompt_learner" / "model.pth.tar-1"))["state_dict"]["ctx"]
    ctx_b = load_checkpoint(str(tmp_path / "b" / "prompt_learner" / "model.pth.tar-1"))["state_dict"]["ctx"]
    assert torch.equal(ctx_a, ctx_b)
    assert first.test_results == second.test_results
