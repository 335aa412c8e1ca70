"""GenPT: "Generalizable Prompt Tuning for Vision-Language Models" (arXiv 2410.03189), our design.

Only the paper's abstract is public. From it: the soft prompt and a hand-crafted prompt are two views
of the text modality whose mutual information is maximised, and a class-wise augmentation from the
visual modality makes the prompts more robust on unseen classes. A secondary summary of the full text
adds that the MI estimator is learnable, that it also couples the augmented visual features with the
prompts, and that the augmentation is class-wise Mixup. Everything concrete below is our choice (see
README "GenPT"), each a ``TRAINER.GENPT.*`` key:

    L = L_ce - LAMBDA_MI * I(soft; hand) - LAMBDA_MI_VISUAL * I(mixed image; soft) + LAMBDA_AUG * L_aug

The MI terms are lower bounds (``MI_ESTIMATOR`` infonce, jsd or dv, :mod:`vlprompt.mutual_info`) with
a fixed cosine critic or a learned one (``MI_CRITIC``) trained jointly with the prompt; ``L_aug`` is
mixed-target cross-entropy on image features mixed within a class, across classes, across the batch,
or at the pixel level (:mod:`vlprompt.mixup`). Checkpoints are CoOp's ``prompt_learner`` files plus a
``genpt`` entry (feature memory, mixing generator, critic), so TPT and CoOp code read the context alone.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.engine.distributed import unwrap_model
from vlprompt.engine.metrics import compute_accuracy
from vlprompt.errors import UserValueError
from vlprompt.mixup import (
    ClassFeatureMemory,
    batch_permutation,
    beta_weights,
    cross_class_partners,
    mix,
    mixed_target_loss,
    same_class_batch_partners,
    same_class_partners,
)
from vlprompt.modeling import build_text_classifier
from vlprompt.modeling.prompt_checkpoints import PROMPT_LEARNER, register_checkpoint_kind
from vlprompt.modeling.prompt_clip import PromptCLIP
from vlprompt.modeling.prompts import learner_from_config
from vlprompt.mutual_info import MI_ESTIMATORS, PairCritic, cosine_scores, mi_bound, view_infonce
from vlprompt.prompt_trainer import PromptLearningTrainer
from vlprompt.templates import dataset_template, ensemble_templates
from vlprompt.tta.sources import LearnedContext

__all__ = ["AUG_MODES", "MI_CRITICS", "ClassFeatureMemory", "GenPT", "GenPTCLIP", "view_infonce"]

log = logging.getLogger(__name__)

TEMPLATE_SETS = ("dataset", "ensemble", "custom")
AUG_MODES = ("intra_class_mixup", "cross_class_mixup", "inter_class_mixup", "pixel_mixup", "none")
MI_CRITICS = ("cosine", "learned")
CHECKPOINT_KEY = "genpt"  # top-level checkpoint entry holding GenPT's own state (TPT recognises it)
log = logging.getLogger(__name__)


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
    # Defaults chosen on the toy world's base-to-new ablation (README "GenPT"; scripts/genpt/toyworld_ablation.py)
    cfg.TRAINER.GENPT.LAMBDA_MI = 10.0  # weight of the MI term between the soft and hand-crafted views
    cfg.TRAINER.GENPT.LAMBDA_MI_VISUAL = 0.0  # weight of the MI term between mixed image features and soft text
    cfg.TRAINER.GENPT.MI_ESTIMATOR = "infonce"  # infonce, jsd or dv (vlprompt/mutual_info.py)
    cfg.TRAINER.GENPT.MI_CRITIC = "cosine"  # cosine (fixed cos / MI_TAU) or learned (trained with the prompt)
    cfg.TRAINER.GENPT.MI_CRITIC_HIDDEN = 128  # hidden width of the learned critic's heads
    cfg.TRAINER.GENPT.MI_CRITIC_LR = 1e-3  # Adam learning rate of the learned critic
    cfg.TRAINER.GENPT.MI_TAU = 0.5  # cosine critic temperature (the learned critic's starting one)
    cfg.TRAINER.GENPT.LAMBDA_AUG = 1.0  # weight of the class-wise augmentation term
    # intra_class_mixup, cross_class_mixup, inter_class_mixup, pixel_mixup or none (vlprompt/mixup.py)
    cfg.TRAINER.GENPT.AUG_MODE = "cross_class_mixup"
    cfg.TRAINER.GENPT.AUG_ALPHA = 1.0  # mixing weight ~ Beta(AUG_ALPHA, AUG_ALPHA)
    cfg.TRAINER.GENPT.MEMORY_SIZE = 8  # features kept per class for Mixup partners not in the batch
    cfg.TRAINER.GENPT.FUSION_ALPHA = 1.0  # prediction: alpha * soft + (1 - alpha) * hand-crafted logits


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
    """CoOp's model plus the frozen hand-crafted view ``hand_features`` ``(C, D)``, the MI critics and
    fused prediction."""

    def __init__(self, classnames: list[str], clip_model: nn.Module, genpt_cfg, templates: list[str]) -> None:
        super().__init__(learner_from_config(classnames, clip_model, genpt_cfg), clip_model)
        self.register_buffer("hand_features", build_text_classifier(clip_model, classnames, templates),
                             persistent=False)
        self.fusion_alpha = float(genpt_cfg.FUSION_ALPHA)
        self.score_views = genpt_cfg.LAMBDA_MI > 0
        self.mi_tau = float(genpt_cfg.MI_TAU)
        # Learned critics ("views", "visual"), attached by the trainer with MI_CRITIC learned (their
        # initialisation must not draw from the global random stream); None: the fixed cosine critic.
        self.critics: nn.ModuleDict | None = None

    def critic_scores(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``T(x_i, y_j)`` by the learned critic ``name``, or the fixed ``cos / MI_TAU`` without one."""
        if self.critics is not None and name in self.critics:
            return self.critics[name](x, y)
        return cosine_scores(x, y, self.mi_tau)

    def forward(self, image_features: torch.Tensor, *extra_features: torch.Tensor, visual_pairs=None):
        """Soft-view logits for ``image_features`` and each extra feature batch, and the MI critics'
        score matrices (all in one forward, as DDP requires): ``"views"`` (soft vs
        hand-crafted view of each class) when LAMBDA_MI > 0, and ``"visual"`` when ``visual_pairs`` =
        ``(features, (label_a, label_b, weight_a))`` is given: each (mixed) image feature against the
        soft text of its (mixed) class, ``normalize(w t_a + (1 - w) t_b)``."""
        text = self.text_features()
        scale = self.logit_scale.exp()
        logits = [scale * feats.to(text.dtype) @ text.t() for feats in (image_features, *extra_features)]
        scores = {}
        if self.score_views:
            scores["views"] = self.critic_scores("views", text, self.hand_features)
        if visual_pairs is not None:
            features, (label_a, label_b, weight_a) = visual_pairs
            mixed_text = F.normalize(mix(text[label_a], text[label_b], weight_a.to(text.dtype)), dim=-1)
            scores["visual"] = self.critic_scores("visual", features, mixed_text)
        return logits, scores

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Test-time logits: the soft view, fused with the hand-crafted view when FUSION_ALPHA < 1."""
        image_features = self.encode_image(image)
        text = self.text_features()
        soft = self.logit_scale.exp() * image_features.to(text.dtype) @ text.t()
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
        if genpt.MI_ESTIMATOR not in MI_ESTIMATORS:
            raise UserValueError(f'TRAINER.GENPT.MI_ESTIMATOR "{genpt.MI_ESTIMATOR}" is not one of {MI_ESTIMATORS}')
        if genpt.MI_CRITIC not in MI_CRITICS:
            raise UserValueError(f'TRAINER.GENPT.MI_CRITIC "{genpt.MI_CRITIC}" is not one of {MI_CRITICS}')
        if not 0.0 <= genpt.FUSION_ALPHA <= 1.0:
            raise UserValueError(f"TRAINER.GENPT.FUSION_ALPHA must be in [0, 1] (got {genpt.FUSION_ALPHA})")
        if genpt.MI_TAU <= 0 or genpt.AUG_ALPHA <= 0 or genpt.MEMORY_SIZE < 1:
            raise UserValueError("TRAINER.GENPT.MI_TAU and AUG_ALPHA must be > 0 and MEMORY_SIZE >= 1")
        if genpt.MI_CRITIC_HIDDEN < 1 or genpt.MI_CRITIC_LR <= 0:
            raise UserValueError(
                f"TRAINER.GENPT.MI_CRITIC_HIDDEN must be >= 1 and MI_CRITIC_LR > 0 (got {genpt.MI_CRITIC_HIDDEN} "
                f"and {genpt.MI_CRITIC_LR})"
            )
        if genpt.LAMBDA_MI < 0 or genpt.LAMBDA_MI_VISUAL < 0 or genpt.LAMBDA_AUG < 0:
            raise UserValueError("TRAINER.GENPT.LAMBDA_MI, LAMBDA_MI_VISUAL and LAMBDA_AUG must be >= 0")
        if genpt.LAMBDA_MI_VISUAL > 0 and cfg.DATALOADER.TRAIN_X.BATCH_SIZE < 2:
            raise UserValueError(
                "TRAINER.GENPT.LAMBDA_MI_VISUAL > 0 estimates MI between the images of a batch, so it needs "
                f"DATALOADER.TRAIN_X.BATCH_SIZE >= 2 (got {cfg.DATALOADER.TRAIN_X.BATCH_SIZE}); raise the batch "
                "size or set TRAINER.GENPT.LAMBDA_MI_VISUAL 0"
            )

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
        self.critic_optim = self.build_critics(dim)

    def build_critics(self, dim: int) -> torch.optim.Optimizer | None:
        """With MI_CRITIC learned, one :class:`PairCritic` per MI term in use, trained by its own Adam;
        initialised from the seed without touching the global random stream. None otherwise."""
        genpt = self.method_cfg
        names = [name for name, weight in (("views", genpt.LAMBDA_MI), ("visual", genpt.LAMBDA_MI_VISUAL))
                 if weight > 0]
        if genpt.MI_CRITIC != "learned" or not names:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(max(int(self.cfg.SEED), 0))
            critics = nn.ModuleDict({
                name: PairCritic(dim, dim, int(genpt.MI_CRITIC_HIDDEN), float(genpt.MI_TAU)) for name in names
            })
        self.model.critics = critics.to(self.device)
        count = sum(p.numel() for p in critics.parameters())
        log.info(f"Learned MI critics {names} ({count} parameters), trained with Adam at lr {genpt.MI_CRITIC_LR}")
        return torch.optim.Adam(critics.parameters(), lr=float(genpt.MI_CRITIC_LR))

    def step_critics(self, grad_scale: float) -> None:
        """One Adam step of the learned critics on the gradients the last backward left (divided by the
        amp loss scale it used); skipped when they are not finite, as the scaler skips the prompt's."""
        if self.critic_optim is None:
            return
        params = [p for group in self.critic_optim.param_groups for p in group["params"] if p.grad is not None]
        if grad_scale != 1.0:
            for p in params:
                p.grad.div_(grad_scale)
        if all(torch.isfinite(p.grad).all() for p in params):
            self.critic_optim.step()
        self.critic_optim.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------ augmentation
    def _mix_weights(self, n: int) -> torch.Tensor:
        return beta_weights(n, self.method_cfg.AUG_ALPHA, self.mix_generator)

    def intra_class_partners(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None):
        """For each sample, another image's feature of its class (batch first, then the memory); returns
        (partners, mask of samples that have one)."""
        return same_class_partners(features, labels, self.memory, self.mix_generator, indices)

    def augmented_features(self, image: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                           indices: torch.Tensor | None = None):
        """(mixed features, targets as (labels_a, labels_b, weight_a), mask) for the configured mode."""
        mode = self.method_cfg.AUG_MODE
        weights = self._mix_weights(len(labels)).to(features.device)
        if mode == "inter_class_mixup":
            perm = batch_permutation(len(labels), self.mix_generator).to(features.device)
            mixed = mix(features, features[perm], weights)
            every = torch.ones(len(labels), dtype=torch.bool, device=features.device)
            return F.normalize(mixed, dim=-1), (labels, labels[perm], weights), every
        if mode == "cross_class_mixup":
            partners, partner_labels, mask = cross_class_partners(features, labels, self.memory, self.mix_generator)
            # without a partner the sample stays itself (weight 1), so it still pairs with its own class
            weights = torch.where(mask, weights, torch.ones_like(weights))
            mixed = mix(features, partners, weights)
            return F.normalize(mixed, dim=-1), (labels, partner_labels, weights), mask
        if mode == "pixel_mixup":
            partner_index = same_class_batch_partners(labels, self.mix_generator)
            mask = (partner_index != torch.arange(len(labels))).to(features.device)
            mixed_images = mix(image, image[partner_index.to(image.device)], weights.to(image.dtype))
            with torch.no_grad():
                mixed = unwrap_model(self.model).encode_image(mixed_images)
            return mixed, (labels, labels, weights), mask
        partners, mask = self.intra_class_partners(features, labels, indices)
        mixed = mix(features, partners, weights)
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
            extra, visual_pairs = [], None
            if use_aug:
                mixed, targets, mask = self.augmented_features(image, features, label, batch.get("index"))
                extra = [mixed]
            if genpt.LAMBDA_MI_VISUAL > 0:
                # the mixed features when augmenting (each with its mixed class), else the plain ones
                plain = (label, label, torch.ones(len(label), device=features.device))
                visual_pairs = (mixed, targets) if use_aug else (features, plain)
            logits, scores = self.model(features, *extra, visual_pairs=visual_pairs)
            loss_ce = F.cross_entropy(logits[0], label)
            loss = loss_ce
            summary = {"loss_ce": loss_ce.item()}
            if "views" in scores:
                mi = mi_bound(genpt.MI_ESTIMATOR, scores["views"])
                loss = loss - genpt.LAMBDA_MI * mi
                summary["loss_mi"] = -mi.item()
                summary["mi"] = mi.item()
            if "visual" in scores:
                # a last batch of one image has no pairs to contrast: the term is zero there
                mi_visual = (mi_bound(genpt.MI_ESTIMATOR, scores["visual"]) if len(scores["visual"]) > 1
                             else scores["visual"].sum() * 0.0)
                loss = loss - genpt.LAMBDA_MI_VISUAL * mi_visual
                summary["mi_visual"] = mi_visual.item()
            if use_aug:
                loss_aug = mixed_target_loss(logits[1], *targets, mask)
                loss = loss + genpt.LAMBDA_AUG * loss_aug
                summary["loss_aug"] = loss_aug.item()
        grad_scale = self.scaler.get_scale() if self.scaler is not None else 1.0
        self.backward_and_update(loss)
        self.step_critics(grad_scale)
        self.memory.update(features, label, batch.get("index"))
        summary = {"loss": loss.item(), **summary, "acc": compute_accuracy(logits[0], label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return unwrap_model(self.model).predict(input)

    # -------------------------------------------------------------------------------------- checkpoint
    def checkpoint_extras(self, name: str) -> dict:
        if name != PROMPT_LEARNER:
            return {}
        genpt = self.method_cfg
        state = {
            "memory": self.memory.state(),
            "mix_generator": self.mix_generator.get_state(),
            "template_set": genpt.TEMPLATE_SET,
            "templates": list(hand_crafted_templates(genpt, self.cfg.DATASET.NAME)),
            "fusion_alpha": float(genpt.FUSION_ALPHA),
        }
        critics = unwrap_model(self.model).critics
        if critics is not None:
            state["critic"] = {key: value.detach().cpu() for key, value in critics.state_dict().items()}
            state["critic_optimizer"] = self.critic_optim.state_dict()
        return {CHECKPOINT_KEY: state}

    def restore_checkpoint_extras(self, name: str, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if name != PROMPT_LEARNER or state is None:
            return
        self.memory.load(state["memory"])
        self.mix_generator.set_state(state["mix_generator"])
        critics = unwrap_model(self.model).critics
        if critics is None:
            return
        if "critic" not in state:
            log.warning("The checkpoint holds no learned MI critic (written without MI_CRITIC learned); "
                        "the critic starts afresh")
            return
        critics.load_state_dict(state["critic"])
        self.critic_optim.load_state_dict(state["critic_optimizer"])


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
