"""What the test-time methods that start from a prompt share: where each image's prompt starts (words or a
CoOp/CoCoOp/GenPT checkpoint), and, for the methods that tune it (TPT, C-TPT), the tuner on the harness.

:class:`PromptStart` gives a method the keys ``CTX_INIT``, ``N_CTX``, ``CLASS_TOKEN_POSITION``, ``LOAD``
and ``COCOOP_RAW_FEATURE`` and the ``--model-dir/--load-epoch`` path; :class:`PromptTuningMethod` adds
TPT's per-image tuning (``SELECTION_P``, ``STEPS``, ``LR``, ``WEIGHT_DECAY``) with the objective a method
chooses (:meth:`PromptTuningMethod.objective`: TPT's entropy by default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from vlprompt.errors import UserValueError
from vlprompt.modeling import CLASS_TOKEN_POSITIONS, PromptTextEncoder, normalize
from vlprompt.tta.harness import TestTimeTrainer
from vlprompt.tta.sources import ContextSource, WordsContext, context_from_checkpoint
from vlprompt.tta.tuner import PromptTuner, TPTSettings

log = logging.getLogger(__name__)


def add_prompt_start_keys(node) -> None:
    """Where every image's prompt starts: hand-crafted words, random vectors or a checkpoint."""
    node.CTX_INIT = "a photo of a"  # words the context starts from ("_" for spaces; "" = random)
    node.N_CTX = 4  # number of random context vectors when CTX_INIT is ""
    node.CLASS_TOKEN_POSITION = "end"
    node.LOAD = ""  # a CoOp/CoCoOp/GenPT checkpoint file or model directory to start from
    node.COCOOP_RAW_FEATURE = False  # True: meta-net on the unnormalised feature (TPT's reference code)


def add_prompt_tuning_keys(node) -> None:
    """TPT's tuning keys with its reference's defaults."""
    node.SELECTION_P = 0.1  # fraction of views kept by confidence selection
    node.STEPS = 1  # AdamW steps per test image
    node.LR = 5e-3
    node.WEIGHT_DECAY = 0.01  # AdamW's default, as the reference


class PromptStart:
    """Mixin for a :class:`TestTimeTrainer` whose images start from a prompt (``self.context``)."""

    def start_problems(self, node) -> list[str]:
        if node.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            choices = ", ".join(CLASS_TOKEN_POSITIONS)
            return [f'CLASS_TOKEN_POSITION is "{node.CLASS_TOKEN_POSITION}"; use one of {choices}']
        return []

    def build_context(self) -> None:
        """The start named by ``LOAD``, else the words ``CTX_INIT`` (random vectors when empty)."""
        node = self.method_cfg
        if node.LOAD:
            self.set_context(context_from_checkpoint(node.LOAD, node))
        else:
            self.set_context(WordsContext(node.CTX_INIT, node.N_CTX, seed=self.seed,
                                          class_token_position=node.CLASS_TOKEN_POSITION))

    def set_context(self, source: ContextSource) -> None:
        """Start every test image from ``source`` (words, or a checkpoint's context)."""
        self.context = source
        log.info(f"{self.cfg_node}: each test image starts from {source.describe()}")

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """``--model-dir/--load-epoch``: start from that checkpoint (kind recognised by its keys)."""
        if not directory:
            log.info("Note that load_model() is skipped as no pretrained model is given")
            return
        node = self.method_cfg
        if node.LOAD:
            raise UserValueError(f'Both --model-dir "{directory}" and TRAINER.{self.cfg_node}.LOAD "{node.LOAD}" '
                                 "name a checkpoint to start from; give one")
        self.set_context(context_from_checkpoint(directory, node, epoch=epoch))

    def method_fingerprint(self) -> str:
        return self.context.fingerprint()


class PromptTuningMethod(PromptStart, TestTimeTrainer):
    """TPT's per-image prompt tuning on the harness; a subclass may change the objective."""

    def method_problems(self, node) -> list[str]:
        problems = []
        if not 0 < node.SELECTION_P <= 1:
            problems.append(f"SELECTION_P is {node.SELECTION_P}; use a fraction in (0, 1]")
        if node.STEPS < 0:
            problems.append(f"STEPS is {node.STEPS}; use >= 0")
        return problems + self.start_problems(node)

    def objective(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The per-image loss ``(chosen logits (B, k, C), text features (B, C, E)) -> (B,)`` the tuner
        lowers; None: TPT's entropy of the averaged prediction."""
        return None

    def build_method(self) -> None:
        node = self.method_cfg
        self.text_encoder = PromptTextEncoder(self.clip.adapter)
        self.logit_scale = self.clip.adapter.logit_scale.detach().exp()
        self.settings = TPTSettings(n_views=node.N_VIEWS, selection_p=node.SELECTION_P, steps=node.STEPS, lr=node.LR,
                                    weight_decay=node.WEIGHT_DECAY, amp=self.amp)
        # As the reference: one loss scaler for the whole run, starting at 1000.
        self.scaler = torch.amp.GradScaler("cuda", init_scale=1000) if self.amp else None
        self.build_context()

    def start_set(self, classnames: list[str]) -> tuple:
        learner = self.context.learner(classnames, self.clip_model).to(self.device)
        learner.requires_grad_(False)
        tuner = PromptTuner(learner, self.text_encoder, self.logit_scale, self.settings, self.scaler,
                            objective=self.objective())
        return learner, tuner

    def adapt(self, state: tuple, features: torch.Tensor) -> torch.Tensor:
        learner, tuner = state
        init = self.context.initial_context(learner, features[:, 0])
        return tuner.tune(normalize(features), init, same_start=self.context.shared).logits

    def method_detail(self) -> dict:
        node = self.method_cfg
        return {"selection_p": node.SELECTION_P, "steps": node.STEPS, "lr": node.LR, "weight_decay": node.WEIGHT_DECAY}

    def summary_params(self) -> tuple:
        return self.settings.steps, self.settings.lr
