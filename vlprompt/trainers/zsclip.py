"""Zero-shot CLIP: a fixed text classifier from hand-crafted prompts, nothing trained."""

from __future__ import annotations

import logging

import torch

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.modeling import build_text_classifier, clip_logits, normalize
from vlprompt.prompt_trainer import ClipTrainer

log = logging.getLogger(__name__)
from vlprompt.templates import dataset_template, ensemble_templates


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ClipTrainer):
    """CLIP with the dataset's own template (``a photo of a {}, a type of pet.`` for OxfordPets)."""

    def templates(self) -> list[str]:
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_model(self) -> None:
        classnames = self.dm.dataset.classnames
        clip = self.build_clip(self.inference_precision())
        templates = self.templates()
        if len(templates) == 1:
            log.info(f"Prompts: {[templates[0].format(c.replace('_', ' ')) for c in classnames]}")
        else:
            log.info(f"Prompt ensembling (n={len(templates)})")
        self.text_features = build_text_classifier(clip.adapter, classnames, templates)
        self.clip_model = clip.model

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        adapter = self.clip.adapter
        image_features = normalize(adapter.encode_image(image.to(self.text_features.dtype)))
        return clip_logits(image_features, self.text_features, adapter.logit_scale, adapter.logit_bias)

    def train(self) -> None:
        """Nothing to train: evaluate instead (the reference would fail in forward_backward)."""
        log.info(f"{type(self).__name__} has no trainable parameters; evaluating instead of training")
        self.test()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over CLIP's 7 selected ImageNet templates plus the dataset's own."""

    def templates(self) -> list[str]:
        return ensemble_templates(self.cfg.DATASET.NAME)
