"""Zero-shot CLIP: a fixed text classifier from hand-crafted prompts, nothing trained."""

from __future__ import annotations

import torch

from vlprompt.clip_backbone import apply_precision, load_clip
from vlprompt.compat import TRAINER_REGISTRY, TrainerX
from vlprompt.prompt_trainer import clip_fingerprint_extras
from vlprompt.prompts import build_text_classifier
from vlprompt.templates import dataset_template, ensemble_templates


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """CLIP with the dataset's own template (``a photo of a {}, a type of pet.`` for OxfordPets)."""

    def templates(self) -> list[str]:
        return [dataset_template(self.cfg.DATASET.NAME)]

    def fingerprint_extras(self) -> dict:
        return clip_fingerprint_extras(self.cfg)

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        # CLIP's released weights are fp16, as the reference runs them; on a CPU that is slow, so fp32 there.
        prec = "fp16" if self.device.type == "cuda" else "fp32"
        clip_model, _ = apply_precision(load_clip(cfg.MODEL.BACKBONE.NAME, device=self.device), prec, self.device)
        clip_model.requires_grad_(False)
        templates = self.templates()
        if len(templates) == 1:
            print(f"Prompts: {[templates[0].format(c.replace('_', ' ')) for c in classnames]}")
        else:
            print(f"Prompt ensembling (n={len(templates)})")
        self.text_features = build_text_classifier(clip_model, classnames, templates)
        self.clip_model = clip_model

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        image_features = self.clip_model.encode_image(image.to(self.text_features.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.clip_model.logit_scale.exp() * image_features @ self.text_features.t()

    def train(self) -> None:
        """Nothing to train: evaluate instead (the reference would fail in forward_backward)."""
        print(f"{type(self).__name__} has no trainable parameters; evaluating instead of training")
        self.test()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over CLIP's 7 selected ImageNet templates plus the dataset's own."""

    def templates(self) -> list[str]:
        return ensemble_templates(self.cfg.DATASET.NAME)
