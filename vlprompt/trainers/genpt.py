"""GenPT: "Generalizable Prompt Tuning for Vision-Language Models" (arXiv 2410.03189), our design.

Only the paper's abstract is public. From it: the soft prompt and a hand-crafted prompt are two views
of the text modality whose mutual information is maximised, and a class-wise augmentation from the
visual modality makes the prompts more robust on unseen classes. Everything concrete below is our
choice (see README "GenPT"), each a ``TRAINER.GENPT.*`` key:

    L = L_ce + LAMBDA_MI * L_mi + LAMBDA_AUG * L_aug

``L_mi`` is a symmetric InfoNCE over the classes between the soft view ``t_c`` and the frozen
hand-crafted view ``h_c`` (``log C - L_mi`` lower-bounds their mutual information, in nats);
``L_aug`` is cross-entropy on image features mixed within a class (default), across classes, or at
the pixel level. Checkpoints are CoOp's ``prompt_learner`` files plus a ``genpt`` entry.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.engine.distributed import unwrap_model
from vlprompt.engine.metrics import compute_accuracy
from vlprompt.errors import UserValueError
from vlprompt.modeling import build_text_classifier
from vlprompt.modeling.prompt_checkpoints import PROMPT_LEARNER, register_checkpoint_kind
from vlprompt.modeling.prompt_clip import PromptCLIP
from vlprompt.modeling.prompts import learner_from_config
from vlprompt.prompt_trainer import PromptLearningTrainer
from vlprompt.templates import dataset_template, ensemble_templates
from vlprompt.tta.sources import LearnedContext

log = logging.getLogger(__name__)

TEMPLATE_SETS = ("dataset", "ensemble", "custom")
AUG_MODES = ("intra_class_mixup", "inter_class_mixup", "pixel_mixup", "none")
CHECKPOINT_KEY = "genpt"  # top-level checkpoint entry holding GenPT's own state (TPT recognises it)


@register_cfg_extension
def add_genpt_keys(cfg) -> None:
    """``TRAINER.GENPT.*``: the prompt (as CoOp's), the hand-crafted view, the loss weights and modes."""
    cfg.TRAINER.GENPT = CN()
    cfg.TRAINER.GENPT.N_CTX = 4
    cfg.TRAINER.GENPT.CTX_INIT = "a photo of a"
    cfg.TRAINER.GENPT.CSC = False
    cfg.TRAINER.GENPT.CLASS_TOKEN_POSITION = "end"
    cfg.TRAINER.GENPT.PREC = "fp16"  # fp16, fp32, amp, bf16
    cfg.TRAINER.GENPT.TEMPLATE_SET = "dataset"  # dataset, ensemble or custom (TEMPLATES)
    cfg.TRAINER.GENPT.TEMPLATES = []  # template strings with "{}" for TEMPLATE_SET custom
    cfg.TRAINER.GENPT.LAMBDA_MI = 1.0  # weight of the mutual-information (InfoNCE) term
    cfg.TRAINER.GENPT.MI_TAU = 0.07  # InfoNCE temperature
    cfg.TRAINER.GENPT.LAMBDA_AUG = 1.0  # weight of the class-wise augmentation term
    cfg.TRAINER.GENPT.AUG_MODE = "intra_class_mixup"  # intra_class_mixup, inter_class_mixup, pixel_mixup, none
    cfg.TRAINER.GENPT.AUG_ALPHA = 1.0  # mixing weight ~ Beta(AUG_ALPHA, AUG_ALPHA)
    cfg.TRAINER.GENPT.MEMORY_SIZE = 8  # features kept per class for intra-class partners
    cfg.TRAINER.GENPT.FUSION_ALPHA = 1.0  # prediction: alpha * soft + (1 - alpha) * hand-crafted logits


def view_infonce(soft: torch.Tensor, hand: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between two L2-normalised views ``(C, D)``, positives on the diagonal.

    ``log C - view_infonce(...)`` is a lower bound on their mutual information (nats).
    """
    logits = soft @ hand.t() / tau
    target = torch.arange(len(soft), device=soft.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class ClassFeatureMemory:
    """The last ``size`` image features seen per class, with the index of the image each came from
    (the image encoder is frozen, so stored features stay valid)."""

    def __init__(self, num_classes: int, size: int, dim: int, device: torch.device) -> None:
        self.features = torch.zeros(num_classes, size, dim, device=device)
        self.image_index = torch.full((num_classes, size), -1, dtype=torch.long, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.size = size

    def update(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        indices = [-1] * len(labels) if indices is None else indices.tolist()
        for feature, label, index in zip(features.detach().float(), labels.tolist(), indices):
            slot = int(self.count[label]) % self.size
            self.features[label, slot] = feature
            self.image_index[label, slot] = index
            self.count[label] += 1

    def sample(self, label: int, generator: torch.Generator, exclude_index: int = -1) -> torch.Tensor | None:
        """A stored feature of class ``label`` from another image than ``exclude_index`` (uniformly among
        those kept), or None if there is none."""
        stored = min(int(self.count[label]), self.size)
        slots = [s for s in range(stored) if exclude_index < 0 or int(self.image_index[label, s]) != exclude_index]
        if not slots:
            return None
        return self.features[label, slots[int(torch.randint(len(slots), (1,), generator=generator))]]

    def state(self) -> dict:
        return {"features": self.features.cpu(), "image_index": self.image_index.cpu(), "count": self.count.cpu()}

    def load(self, state: dict) -> None:
        self.features.copy_(state["features"])
        self.image_index.copy_(state["image_index"])
        self.count.copy_(state["count"])


def hand_crafted_templates(genpt_cfg, dataset_name: str) -> list[str]:
    """The templates of the frozen view: the dataset's CoOp template, the ZeroshotCLIP2 ensemble, or TEMPLATES."""
    if genpt_cfg.TEMPLATE_SET == "dataset":
        return [dataset_template(dataset_name)]
    if genpt_cfg.TEMPLATE_SET == "ensemble":
        return ensemble_templates(dataset_name)
    templates = list(genpt_cfg.TEMPLATES)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise UserValueError(
            "TRAINER.GENPT.TEMPLATE_SET custom needs TRAINER.GENPT.TEMPLATES, a list of strings each with "
            f'"{{}}" for the class name (got {templates!r})'
        )
    return templates


class GenPTCLIP(PromptCLIP):
    """CoOp's model plus the frozen hand-crafted view ``hand_features`` ``(C, D)`` and fused prediction."""

    def __init__(self, classnames: list[str], clip_model: nn.Module, genpt_cfg, templates: list[str]) -> None:
        super().__init__(learner_from_config(classnames, clip_model, genpt_cfg), clip_model)
        self.register_buffer("hand_features", build_text_classifier(clip_model, classnames, templates),
                             persistent=False)
        self.fusion_alpha = float(genpt_cfg.FUSION_ALPHA)

    def forward(self, image_features: torch.Tensor, *extra_features: torch.Tensor):
        """Soft-view logits for ``image_features`` and for each extra feature batch, and the soft text
        features (so every term's gradient flows through one forward, as DDP requires)."""
        text = self.text_features()
        scale = self.logit_scale.exp()
        logits = [scale * feats.to(text.dtype) @ text.t() for feats in (image_features, *extra_features)]
        return logits, text

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Test-time logits: the soft view, fused with the hand-crafted view when FUSION_ALPHA < 1."""
        image_features = self.encode_image(image)
        (soft,), _ = self.forward(image_features)
        if self.fusion_alpha >= 1.0:
            return soft
        hand = self.logit_scale.exp() * image_features.to(soft.dtype) @ self.hand_features.to(soft.dtype).t()
        return self.fusion_alpha * soft + (1.0 - self.fusion_alpha) * hand


@TRAINER_REGISTRY.register()
class GenPT(PromptLearningTrainer):
    """Generalizable Prompt Tuning (our design following the abstract of arXiv 2410.03189)."""

    cfg_node = "GENPT"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        genpt = cfg.TRAINER.GENPT
        if genpt.TEMPLATE_SET not in TEMPLATE_SETS:
            raise UserValueError(f'TRAINER.GENPT.TEMPLATE_SET "{genpt.TEMPLATE_SET}" is not one of {TEMPLATE_SETS}')
        if genpt.AUG_MODE not in AUG_MODES:
            raise UserValueError(f'TRAINER.GENPT.AUG_MODE "{genpt.AUG_MODE}" is not one of {AUG_MODES}')
        if not 0.0 <= genpt.FUSION_ALPHA <= 1.0:
            raise UserValueError(f"TRAINER.GENPT.FUSION_ALPHA must be in [0, 1] (got {genpt.FUSION_ALPHA})")
        if genpt.MI_TAU <= 0 or genpt.AUG_ALPHA <= 0 or genpt.MEMORY_SIZE < 1:
            raise UserValueError("TRAINER.GENPT.MI_TAU and AUG_ALPHA must be > 0 and MEMORY_SIZE >= 1")

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        templates = hand_crafted_templates(self.method_cfg, self.cfg.DATASET.NAME)
        log.info(f"Hand-crafted view: {len(templates)} template(s), e.g. {templates[0]!r}")
        return GenPTCLIP(classnames, clip_model, self.method_cfg, templates)

    def build_model(self) -> None:
        super().build_model()
        dim = self.model.hand_features.shape[1]
        self.memory = ClassFeatureMemory(self.num_classes, self.method_cfg.MEMORY_SIZE, dim, self.device)
        # Mixing draws come from their own generator, so switching a term off leaves the global random
        # stream (data order, augmentation) exactly as CoOp's.
        self.mix_generator = torch.Generator().manual_seed(max(int(self.cfg.SEED), 0))

    # ------------------------------------------------------------------------------------ augmentation
    def _mix_weights(self, n: int) -> torch.Tensor:
        alpha = float(self.method_cfg.AUG_ALPHA)
        gamma_a = torch._standard_gamma(torch.full((n,), alpha), generator=self.mix_generator)
        gamma_b = torch._standard_gamma(torch.full((n,), alpha), generator=self.mix_generator)
        return gamma_a / (gamma_a + gamma_b)  # Beta(alpha, alpha) from two Gammas

    def intra_class_partners(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None):
        """For each sample, another image's feature of its class: from the batch when the class appears
        twice, else from the class memory; returns (partners, mask of samples that have one)."""
        partners = torch.zeros_like(features)
        has_partner = torch.zeros(len(labels), dtype=torch.bool, device=features.device)
        label_list = labels.tolist()
        for i, label in enumerate(label_list):
            same = [j for j, other in enumerate(label_list) if other == label and j != i]
            if same:
                j = same[int(torch.randint(len(same), (1,), generator=self.mix_generator))]
                partners[i] = features[j]
                has_partner[i] = True
            else:
                exclude = -1 if indices is None else int(indices[i])
                stored = self.memory.sample(label, self.mix_generator, exclude_index=exclude)
                if stored is not None:
                    partners[i] = stored.to(features.dtype)
                    has_partner[i] = True
        return partners, has_partner

    def augmented_features(self, image: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                           indices: torch.Tensor | None = None):
        """(mixed features, targets as (labels_a, labels_b, weight_a), mask) for the configured mode."""
        mode = self.method_cfg.AUG_MODE
        weights = self._mix_weights(len(labels)).to(features.device)
        if mode == "inter_class_mixup":
            perm = torch.randperm(len(labels), generator=self.mix_generator).to(features.device)
            mixed = weights[:, None] * features + (1 - weights[:, None]) * features[perm]
            mask = torch.ones(len(labels), dtype=torch.bool, device=features.device)
            return F.normalize(mixed, dim=-1), (labels, labels[perm], weights), mask
        if mode == "pixel_mixup":
            # same-class partners from the batch only (the memory holds features, not images)
            partner_index = torch.arange(len(labels))
            label_list = labels.tolist()
            for i, label in enumerate(label_list):
                same = [j for j, other in enumerate(label_list) if other == label and j != i]
                if same:
                    partner_index[i] = same[int(torch.randint(len(same), (1,), generator=self.mix_generator))]
            mask = (partner_index != torch.arange(len(labels))).to(features.device)
            w = weights.to(image.dtype)[:, None, None, None]
            mixed_images = w * image + (1 - w) * image[partner_index.to(image.device)]
            with torch.no_grad():
                mixed = unwrap_model(self.model).encode_image(mixed_images)
            return mixed, (labels, labels, weights), mask
        partners, mask = self.intra_class_partners(features, labels, indices)
        mixed = weights[:, None] * features + (1 - weights[:, None]) * partners
        return F.normalize(mixed, dim=-1), (labels, labels, weights), mask

    # ---------------------------------------------------------------------------------------- training
    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        genpt = self.method_cfg
        model = unwrap_model(self.model)
        use_aug = genpt.LAMBDA_AUG > 0 and genpt.AUG_MODE != "none"
        with self.autocast():
            with torch.no_grad():  # the image encoder is frozen
                features = model.encode_image(image)
            extra = []
            if use_aug:
                mixed, (label_a, label_b, weight_a), mask = self.augmented_features(
                    image, features, label, batch.get("index")
                )
                extra = [mixed]
            logits, text = self.model(features, *extra)
            loss_ce = F.cross_entropy(logits[0], label)
            loss = loss_ce
            summary = {"loss_ce": loss_ce.item()}
            if genpt.LAMBDA_MI > 0:
                loss_mi = view_infonce(text.float(), model.hand_features.float(), float(genpt.MI_TAU))
                loss = loss + genpt.LAMBDA_MI * loss_mi
                summary["loss_mi"] = loss_mi.item()
                summary["mi"] = math.log(len(text)) - loss_mi.item()
            if use_aug:
                loss_aug = self.augmentation_loss(logits[1], label_a, label_b, weight_a, mask)
                loss = loss + genpt.LAMBDA_AUG * loss_aug
                summary["loss_aug"] = loss_aug.item()
        self.backward_and_update(loss)
        self.memory.update(features, label, batch.get("index"))
        summary = {"loss": loss.item(), **summary, "acc": compute_accuracy(logits[0], label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    @staticmethod
    def augmentation_loss(logits, label_a, label_b, weight_a, mask) -> torch.Tensor:
        """Mixed-target cross-entropy over the samples that have a partner (0 when none has)."""
        if not mask.any():
            return logits.sum() * 0.0
        logits, label_a, label_b, weight_a = logits[mask], label_a[mask], label_b[mask], weight_a[mask]
        per_sample = weight_a * F.cross_entropy(logits, label_a, reduction="none")
        per_sample = per_sample + (1 - weight_a) * F.cross_entropy(logits, label_b, reduction="none")
        return per_sample.mean()

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return unwrap_model(self.model).predict(input)

    # -------------------------------------------------------------------------------------- checkpoint
    def checkpoint_extras(self, name: str) -> dict:
        if name != PROMPT_LEARNER:
            return {}
        genpt = self.method_cfg
        return {
            CHECKPOINT_KEY: {
                "memory": self.memory.state(),
                "mix_generator": self.mix_generator.get_state(),
                "template_set": genpt.TEMPLATE_SET,
                "templates": list(hand_crafted_templates(genpt, self.cfg.DATASET.NAME)),
                "fusion_alpha": float(genpt.FUSION_ALPHA),
            }
        }

    def restore_checkpoint_extras(self, name: str, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if name == PROMPT_LEARNER and state is not None:
            self.memory.load(state["memory"])
            self.mix_generator.set_state(state["mix_generator"])


class GenPTContext(LearnedContext):
    """TPT starts from GenPT's learned soft context (the hand-crafted view is not part of TPT's model)."""

    kind = "genpt"

    def describe(self) -> str:
        return "GenPT " + super().describe().removeprefix("CoOp ")


def _genpt_context(state: dict, source: str, tpt_cfg) -> GenPTContext:
    position = getattr(tpt_cfg, "CLASS_TOKEN_POSITION", "end") if tpt_cfg is not None else "end"
    return GenPTContext(state["ctx"], source, class_token_position=position)


register_checkpoint_kind(
    "genpt", f"ctx + a top-level '{CHECKPOINT_KEY}' entry", lambda keys: keys == {"ctx", f"checkpoint:{CHECKPOINT_KEY}"},
    _genpt_context,
)
