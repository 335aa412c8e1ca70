"""The class text features of the test-time methods that do not tune the prompt (Zero, MTA, TDA).

They come from a prompt start (words such as "a photo of a", or a CoOp/CoCoOp/GenPT checkpoint: the same
sources TPT starts from) or from a template ensemble (``TEMPLATES``: each template's features normalised,
averaged and normalised again, as CLIP's and Tip-Adapter's ensembles). Without per-image context they are
computed once per class set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from vlprompt.errors import UserValueError
from vlprompt.modeling import PromptTextEncoder, build_text_classifier, normalize
from vlprompt.templates import IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_SELECT, dataset_template
from vlprompt.tta.harness import TestTimeTrainer
from vlprompt.tta.prompt_tuning import PromptStart, add_prompt_start_keys
from vlprompt.tta.sources import ContextSource

log = logging.getLogger(__name__)

# TEMPLATES: "" (the prompt start), "dataset" (CoOp's template of the dataset), "tip7" (the 7 templates
# Tip-Adapter, Zero's --templates and TDA use), "clip80" (CLIP's 80 ImageNet templates), "tda" (TDA's
# choice per dataset).
TEMPLATE_CHOICES = ("", "dataset", "tip7", "clip80", "tda")
# TDA's configs: the 7 templates for ImageNet, -A, -V2, Caltech101, StanfordCars and SUN397, the 80 for
# ImageNet-R and -Sketch, the dataset's own template for the other fine-grained sets.
TDA_TIP7_SETS = ("ImageNet", "ImageNetA", "ImageNetV2", "Caltech101", "StanfordCars", "SUN397")
TDA_CLIP80_SETS = ("ImageNetR", "ImageNetSketch")


def templates_for(choice: str, dataset_name: str) -> list[str] | None:
    """The templates of ``TEMPLATES`` = ``choice`` on a dataset (registered name); None: use the prompt start."""
    if choice not in TEMPLATE_CHOICES:
        raise UserValueError(f'TEMPLATES is "{choice}"; use one of {", ".join(repr(c) for c in TEMPLATE_CHOICES)}')
    if not choice:
        return None
    if choice == "tda":
        choice = "tip7" if dataset_name in TDA_TIP7_SETS else "clip80" if dataset_name in TDA_CLIP80_SETS else "dataset"
    if choice == "tip7":
        return list(IMAGENET_TEMPLATES_SELECT)
    if choice == "clip80":
        return list(IMAGENET_TEMPLATES)
    return [dataset_template(dataset_name)]


class ClassTexts:
    """Normalised class text features ``(B, n_cls, E)`` for B test images, from ``context`` or ``templates``."""

    def __init__(self, clip, classnames: Sequence[str], context: ContextSource | None,
                 templates: Sequence[str] | None, device: torch.device) -> None:
        self.adapter = clip.adapter
        self.learner = None
        self._fixed: torch.Tensor | None = None
        with torch.no_grad():
            if templates:
                self._fixed = build_text_classifier(self.adapter, classnames, templates).float()
            elif context is None:
                raise ValueError("ClassTexts needs a prompt start or templates")
            else:
                self.context = context
                self.learner = context.learner(classnames, clip.model).to(device).requires_grad_(False)
                self.encoder = PromptTextEncoder(self.adapter)
                if context.shared:
                    self._fixed = self._encode(context.initial_context(self.learner, torch.zeros(1, 1)))[0]

    @property
    def shared(self) -> bool:
        """The same features for every image (words, CoOp, templates), computed once."""
        return self._fixed is not None

    @property
    def fixed(self) -> torch.Tensor:
        """The features ``(n_cls, E)`` every image shares (only when :attr:`shared`)."""
        if self._fixed is None:
            raise ValueError("these class texts depend on the image (a CoCoOp start)")
        return self._fixed

    def _encode(self, ctx: torch.Tensor) -> torch.Tensor:
        learner = self.learner
        features = self.encoder(learner.assemble(ctx), learner.tokenized_prompts,
                                shared_prefix=learner.shared_prefix_length)
        return normalize(features.float())

    @torch.no_grad()
    def __call__(self, originals: torch.Tensor) -> torch.Tensor:
        """Features ``(B, n_cls, E)`` for images whose original views have the unnormalised features
        ``originals`` ``(B, E)``."""
        if self._fixed is not None:
            return self._fixed.to(originals.device).unsqueeze(0).expand(originals.shape[0], -1, -1)
        return self._encode(self.context.initial_context(self.learner, originals))



def add_class_text_keys(node, templates: str = "") -> None:
    """Where a non-tuning method's class texts come from: the prompt start's keys, or ``TEMPLATES``."""
    add_prompt_start_keys(node)
    node.TEMPLATES = templates  # "" (the prompt start), dataset, tip7, clip80 or tda (see TEMPLATE_CHOICES)


class FixedTextMethod(PromptStart, TestTimeTrainer):
    """A test-time method that scores the views against fixed class texts (Zero, MTA, TDA): from the prompt
    start (words, CoOp, CoCoOp, GenPT) or from ``TEMPLATES``."""

    def method_problems(self, node) -> list[str]:
        problems = []
        if node.TEMPLATES not in TEMPLATE_CHOICES:
            problems.append(f'TEMPLATES is "{node.TEMPLATES}"; use one of '
                            + ", ".join(repr(choice) for choice in TEMPLATE_CHOICES))
        return problems + self.start_problems(node)

    def build_method(self) -> None:
        self.logit_scale = self.clip.adapter.logit_scale.detach().exp().float()
        self.context = None
        if self.method_cfg.TEMPLATES:
            log.info(f"{self.cfg_node}: class texts from the templates {self.method_cfg.TEMPLATES!r}")
        else:
            self.build_context()

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        if directory and self.method_cfg.TEMPLATES:
            raise UserValueError(f'--model-dir "{directory}" gives a prompt to start from, but '
                                 f'TRAINER.{self.cfg_node}.TEMPLATES is "{self.method_cfg.TEMPLATES}"; set it to "" '
                                 "to use the checkpoint's prompt")
        super().load_model(directory, epoch)

    def class_texts(self, classnames: Sequence[str]) -> ClassTexts:
        """The class texts of the dataset being evaluated."""
        templates = templates_for(self.method_cfg.TEMPLATES, self.set_names[self.current_set])
        return ClassTexts(self.clip, classnames, None if templates else self.context, templates, self.device)

    def method_detail(self) -> dict:
        return {"templates": self.method_cfg.TEMPLATES}

    def method_fingerprint(self) -> str:
        if self.method_cfg.TEMPLATES:
            return f"templates:{self.method_cfg.TEMPLATES}"
        return super().method_fingerprint()
