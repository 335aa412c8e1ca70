"""Run C-TPT's, Zero's, MTA's and TDA's own code on the fixed inputs and store what it outputs.

Outside the project, one reference per process (each brings its own ``clip``, ``data`` and ``utils``
packages):

    python tests/tta_reference.py /tmp/inputs.pt
    python tests/data/tta_reference/run_references.py ctpt /path/to/C-TPT /tmp/inputs.pt tests/data/tta_reference
    (likewise zero FarinaMatteo/zero, mta MaxZanella/MTA, tda kdiAAA/TDA)

Nothing of the references is changed or copied here: their modules are imported from their checkout and
called as their main loops call them. What this script replaces, only to run on a CPU without downloads:
``clip.load`` (builds the model from the inputs' state dict with the reference's own ``build_model``),
``Tensor.cuda`` (a no-op), ``Tensor.half`` during TDA's cache scoring (its one-hot values stay in the
features' fp32), and the modules a reference imports but never calls here (``ipdb``, ``wandb``,
``pandas``, ``gdown``), and TDA's ``cls_acc`` (numpy >= 2.3 refuses its ``float()`` of an array). Recording wrappers around a few of their functions capture intermediate values (selected
views, the loss handed to the loss scaler, tuned contexts).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import torch


def install_torchvision_shim() -> None:
    """torchvision's CUDA wheel on a CPU torch needs its op schemas defined before it is imported."""
    if torch.version.cuda is not None:
        return
    try:
        torch.ops.torchvision.nms
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TV_LIB"] = lib


def stub_modules(*names: str) -> None:
    for name in names:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.log = lambda *a, **k: None
        module.set_trace = lambda *a, **k: None
        sys.modules[name] = module


def patched_load(inputs: dict):
    """``clip.load`` replacement: the reference's ``build_model`` on the inputs' state dict, in fp32 on the CPU."""
    from clip.model import build_model  # the reference's own

    def load(*args, **kwargs):
        model = build_model({k: v.clone() for k, v in inputs["state_dict"].items()}).float().eval()
        return model, model.state_dict()["text_projection"].shape[1], None

    return load


def loader(views: torch.Tensor, labels: torch.Tensor) -> list:
    """What the references' DataLoaders give at batch size 1: per image a list of (1, 3, R, R) views (a
    (1, 3, R, R) tensor for one view) and the target."""
    batches = []
    for image_views, label in zip(views, labels):
        if image_views.shape[0] > 1:
            batches.append(([v[None] for v in image_views], label.view(1)))
        else:
            batches.append((image_views[:1], label.view(1)))
    return batches


class RecordingScaler:
    """Stands in for the (on a CPU disabled, so pass-through) GradScaler and records each loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def scale(self, loss):
        self.losses.append(float(loss))
        return loss

    def step(self, optimizer) -> None:
        optimizer.step()

    def update(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------- C-TPT
def run_ctpt(inputs: dict) -> dict:
    stub_modules("ipdb")
    import tpt_classification as ref
    from clip import custom_clip

    custom_clip.load = patched_load(inputs)
    settings = inputs["settings"]["ctpt"]
    views, labels = inputs["views"]["ctpt"], inputs["labels"]["ctpt"]
    args = types.SimpleNamespace(
        cocoop=False, tta_steps=settings["tta_steps"], run_type="tpt_ctpt", selection_p=settings["selection_p"],
        lambda_term=settings["lambda_term"], two_step=False, gpu=0, tpt=True, print_freq=10**9, arch="ViT-B/16",
        lr=settings["lr"], n_ctx=4,
    )
    model = ref.get_coop(args.arch, "I", "cpu", args.n_ctx, settings["ctx_init"])
    model.reset_classnames(inputs["classnames"], args.arch)
    for name, param in model.named_parameters():
        if "prompt_learner" not in name:
            param.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.prompt_learner.parameters(), args.lr)
    optim_state = __import__("copy").deepcopy(optimizer.state_dict())

    record = {"selected": [], "ctx": [], "atfd": [], "logits": []}
    select = ref.select_confident_samples

    def recording_select(logits, top):
        out, idx = select(logits, top)
        record["selected"].append(idx.clone())
        return out, idx

    tune = ref.test_time_tuning

    def recording_tune(model, inputs_, optimizer, scaler, args):
        result = tune(model, inputs_, optimizer, scaler, args)
        record["ctx"].append(model.prompt_learner.ctx.detach().clone())
        record["atfd"].append(float(model.l2_norm_mean))  # from the tuning forward, before the step
        return result

    inference = model.inference

    def recording_inference(image):
        out = inference(image)
        if image.shape[0] == 1:
            record["logits"].append(out.detach().clone()[0])
        return out

    ref.select_confident_samples = recording_select
    ref.test_time_tuning = recording_tune
    model.inference = recording_inference
    scaler = RecordingScaler()
    result_dict = {"max_confidence": [], "prediction": [], "label": []}
    ref.test_time_adapt_eval(loader(views, labels), model, None, optimizer, optim_state, scaler, args, result_dict)
    ece, _, _, _ = ref.ECE_Loss(20, result_dict["prediction"], result_dict["max_confidence"],
                                (torch.tensor(result_dict["prediction"]) == torch.tensor(result_dict["label"])).tolist())
    return {
        "selected": torch.stack(record["selected"]), "loss": torch.tensor(scaler.losses, dtype=torch.float64),
        "atfd": torch.tensor(record["atfd"], dtype=torch.float64), "ctx": torch.stack(record["ctx"]),
        "logits": torch.stack(record["logits"]), "prediction": torch.tensor(result_dict["prediction"]),
        "confidence": torch.tensor(result_dict["max_confidence"], dtype=torch.float64),
        "ece20": torch.tensor(float(ece) * 100, dtype=torch.float64),
    }


# -------------------------------------------------------------------------------------------------- Zero
def run_zero(inputs: dict) -> dict:
    stub_modules("pandas")
    from clip import custom_clip

    custom_clip.load = patched_load(inputs)
    import ttas.zero as zero_module
    from ttas.zero import Zero

    settings = inputs["settings"]["zero"]
    module = Zero(model="clip", arch="ViT-B/16", pretrained="openai", gpu="cpu", ctx_init=settings["ctx_init"],
                  use_templates=False, maple_weights=None, seed=0)
    module.model.reset_classnames([name.replace("_", " ") for name in inputs["classnames"]])
    record = {"order": [], "ties": []}
    confidence_filter = zero_module.confidence_filter
    greedy_break = zero_module.greedy_break

    def recording_filter(logits, probs, top, return_idx=False):
        out = confidence_filter(logits, probs, top, return_idx)
        record["order"].append(out[2].clone())
        return out

    def recording_break(ties, logits, device):
        pred = greedy_break(ties, logits, device)
        record["ties"].append((len(record["order"]) - 1, list(map(int, ties)), int(pred)))
        return pred

    zero_module.confidence_filter = recording_filter
    zero_module.greedy_break = recording_break
    votes = []
    for image_views in inputs["views"]["zero"]:
        with torch.autocast("cpu", enabled=False):
            votes.append(module(image_views)[0].clone())
    tie_images = torch.tensor([t[0] for t in record["ties"]], dtype=torch.long)
    tie_preds = torch.tensor([t[2] for t in record["ties"]], dtype=torch.long)
    # Its tie-break on made-up discarded views: tied classes that some discarded view predicts (the greedy
    # path), and tied classes none does (the fallback, with its bitwise-NOT mask).
    generator = torch.Generator().manual_seed(0)
    break_logits, break_ties, break_preds = [], [], []
    for case in range(8):
        logits = torch.randn(5, len(inputs["classnames"]), generator=generator)
        voted = logits.argmax(1).tolist()
        others = [c for c in range(logits.shape[1]) if c not in voted]
        ties = [voted[2], others[0]] if case % 2 == 0 else others[:2]
        break_logits.append(logits.clone())
        break_ties.append(torch.tensor(ties))
        break_preds.append(int(greedy_break(ties, logits, "cpu")))
    return {"order": torch.stack(record["order"]), "votes": torch.stack(votes), "tie_images": tie_images,
            "tie_predictions": tie_preds, "break_logits": torch.stack(break_logits),
            "break_ties": torch.stack(break_ties), "break_predictions": torch.tensor(break_preds)}


# --------------------------------------------------------------------------------------------------- MTA
def run_mta(inputs: dict) -> dict:
    stub_modules("ipdb")
    from clip import custom_clip

    custom_clip.load = patched_load(inputs)
    from clip.custom_clip import get_coop
    from mta import solve_mta

    settings = inputs["settings"]["mta"]
    model = get_coop("ViT-B/16", "I", "cpu", 4, settings["ctx_init"])
    model.reset_classnames(inputs["classnames"], "ViT-B/16")
    args = types.SimpleNamespace(lambda_y=settings["lambda_y"], lambda_q=settings["lambda_q"])
    outputs = [solve_mta(model, image_views, args)[0].detach().clone() for image_views in inputs["views"]["mta"]]
    return {"logits": torch.stack(outputs)}


# --------------------------------------------------------------------------------------------------- TDA
def run_tda(inputs: dict) -> dict:
    stub_modules("wandb", "gdown")
    import clip

    clip.load = patched_load(inputs)
    import tda_runner as ref

    settings = inputs["settings"]["tda"]
    clip_model = clip.load("ViT-B/16")[0]
    clip_weights = ref.clip_classifier(inputs["classnames"], settings["template"], clip_model)
    pos = {"enabled": True, **settings["positive"]}
    neg = {"enabled": True, **{k: v for k, v in settings["negative"].items() if k not in ("entropy_threshold",
                                                                                       "mask_threshold")}}
    neg["entropy_threshold"] = dict(zip(("lower", "upper"), settings["negative"]["entropy_threshold"]))
    neg["mask_threshold"] = dict(zip(("lower", "upper"), settings["negative"]["mask_threshold"]))
    out = {"clip_weights": clip_weights.detach().clone()}
    for case in ("tda_multi", "tda_single"):
        record = {"logits": [], "pred": [], "loss": []}
        cache_logits = ref.compute_cache_logits
        get_clip_logits = ref.get_clip_logits

        def recording_get(images, clip_model, clip_weights, record=record, get_clip_logits=get_clip_logits):
            result = get_clip_logits(images, clip_model, clip_weights)
            record["pred"].append(result[4])
            record["loss"].append(float(result[2]))
            return result

        accuracy = ref.cls_acc

        def recording_acc(output, target, topk=1, record=record):
            # Its cls_acc converts a 1-element array with float(), which numpy >= 2.3 refuses; the same
            # number, computed here.
            record["logits"].append(output.detach().clone()[0])
            return 100.0 * float(output.argmax(-1).eq(target).sum()) / target.shape[0]

        ref.get_clip_logits, ref.cls_acc = recording_get, recording_acc
        half = torch.Tensor.half
        torch.Tensor.half = lambda self, *a, **k: self.float()  # the cache values in fp32, as the features
        try:
            ref.run_test_tda(pos, neg, loader(inputs["views"][case], inputs["labels"][case]), clip_model, clip_weights)
        finally:
            torch.Tensor.half = half
            ref.get_clip_logits, ref.cls_acc, ref.compute_cache_logits = get_clip_logits, accuracy, cache_logits
        out[case] = {"logits": torch.stack(record["logits"]), "pseudo_label": torch.tensor(record["pred"]),
                     "entropy": torch.tensor(record["loss"], dtype=torch.float64)}
    return {"clip_weights": out["clip_weights"], **{f"{case}_{key}": value for case in ("tda_multi", "tda_single")
                                                    for key, value in out[case].items()}}


RUNNERS = {"ctpt": run_ctpt, "zero": run_zero, "mta": run_mta, "tda": run_tda}


def main(argv: list[str]) -> None:
    method, checkout, inputs_path, out_dir = argv
    install_torchvision_shim()
    torch.Tensor.cuda = lambda self, *a, **k: self  # every .cuda() of the references: stay on the CPU
    sys.path.insert(0, str(Path(checkout).resolve()))
    torch.set_num_threads(1)
    inputs = torch.load(inputs_path, weights_only=True)
    outputs = RUNNERS[method](inputs)
    path = Path(out_dir) / f"{method}.pt"
    torch.save(outputs, path)
    print(f"wrote {path}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
