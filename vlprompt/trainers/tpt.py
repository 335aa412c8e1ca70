"""TPT (Shu et al., NeurIPS 2022): test-time prompt tuning, one test image at a time.

For every test image: N views (the original + random crops, AugMix on top for fine-grained sets), keep the
SELECTION_P most confident (lowest-entropy) views, take STEPS AdamW steps on the prompt context to lower the
entropy of their averaged prediction, predict the original view with the tuned prompt, then start the next
image from the initial prompt again. The initial prompt is hand-crafted words (CTX_INIT) or a CoOp/CoCoOp
checkpoint (TRAINER.TPT.LOAD, or --model-dir/--load-epoch).

Nothing is trained: ``train()`` evaluates. Exact savings over the reference: views are encoded once per
image (the original's feature is reused for the prediction), the text tower stops at the last end-of-text
token and computes the shared [SOS][context] positions once, CLIP is loaded once for all datasets, and on a
GPU several images are tuned at once with independent prompts (TRAINER.TPT.BATCH_IMAGES). Predictions are
logged per image, so a killed run resumes, and TRAINER.TPT.SHARD i/n evaluates one part of the test set
(``python -m vlprompt.tta.merge`` combines the parts).

This file holds the method (its keys, where each image's prompt starts, the tuner); the datasets, views,
per-image loop, resume and shards are the test-time harness (:mod:`vlprompt.tta.harness`).
"""

from __future__ import annotations

import logging

import torch
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.errors import UserValueError
from vlprompt.modeling import CLASS_TOKEN_POSITIONS, PromptTextEncoder, normalize
from vlprompt.tta.harness import TestTimeTrainer
from vlprompt.tta.records import shard_name
from vlprompt.tta.sources import ContextSource, WordsContext, context_from_checkpoint

log = logging.getLogger(__name__)
from vlprompt.tta.tuner import PromptTuner, TPTSettings


@register_cfg_extension
def add_tpt_keys(cfg) -> None:
    """``TRAINER.TPT.*`` with the reference's defaults."""
    cfg.TRAINER.TPT = CN()
    cfg.TRAINER.TPT.N_VIEWS = 64  # views per test image, the original included (the reference's -b)
    cfg.TRAINER.TPT.SELECTION_P = 0.1  # fraction of views kept by confidence selection
    cfg.TRAINER.TPT.STEPS = 1  # AdamW steps per test image
    cfg.TRAINER.TPT.LR = 5e-3
    cfg.TRAINER.TPT.WEIGHT_DECAY = 0.01  # AdamW's default, as the reference
    cfg.TRAINER.TPT.CTX_INIT = "a photo of a"  # words the context starts from ("_" for spaces; "" = random)
    cfg.TRAINER.TPT.N_CTX = 4  # number of random context vectors when CTX_INIT is ""
    cfg.TRAINER.TPT.CLASS_TOKEN_POSITION = "end"
    cfg.TRAINER.TPT.LOAD = ""  # a CoOp/CoCoOp checkpoint file or model directory to start from
    cfg.TRAINER.TPT.COCOOP_RAW_FEATURE = False  # True: meta-net on the unnormalised feature (reference code)
    cfg.TRAINER.TPT.AUG = "auto"  # auto (crop for ImageNet sets, AugMix otherwise), crop or augmix
    cfg.TRAINER.TPT.PREC = "amp"  # amp (fp16 autocast on CUDA, as the reference) or fp32
    cfg.TRAINER.TPT.BATCH_IMAGES = 1  # test images tuned at once (independent prompts; same result)
    cfg.TRAINER.TPT.GPU_VIEWS = False  # make the views on the model's device instead of in loader workers
    cfg.TRAINER.TPT.SHARD = ""  # "i/n": evaluate the i-th of n parts (else $VLPROMPT_TPT_SHARD)
    cfg.TRAINER.TPT.TEST_SETS = ""  # "/"-separated datasets (names or reference ids); "" = DATASET.NAME
    cfg.TRAINER.TPT.PRINT_FREQ = 200


@TRAINER_REGISTRY.register()
class TPT(TestTimeTrainer):
    """Test-time prompt tuning on the test split of every dataset in TRAINER.TPT.TEST_SETS (or DATASET.NAME)."""

    cfg_node = "TPT"

    def method_problems(self, tpt) -> list[str]:
        problems = []
        if not 0 < tpt.SELECTION_P <= 1:
            problems.append(f"SELECTION_P is {tpt.SELECTION_P}; use a fraction in (0, 1]")
        if tpt.STEPS < 0:
            problems.append(f"STEPS is {tpt.STEPS}; use >= 0")
        if tpt.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            problems.append(f'CLASS_TOKEN_POSITION is "{tpt.CLASS_TOKEN_POSITION}"; use one of '
                            f'{", ".join(CLASS_TOKEN_POSITIONS)}')
        return problems

    def build_method(self) -> None:
        tpt = self.method_cfg
        self.text_encoder = PromptTextEncoder(self.clip.adapter)
        self.logit_scale = self.clip.adapter.logit_scale.detach().exp()
        self.settings = TPTSettings(n_views=tpt.N_VIEWS, selection_p=tpt.SELECTION_P, steps=tpt.STEPS, lr=tpt.LR,
                                    weight_decay=tpt.WEIGHT_DECAY, amp=self.amp)
        # As the reference: one loss scaler for the whole run, starting at 1000.
        self.scaler = torch.amp.GradScaler("cuda", init_scale=1000) if self.amp else None
        if tpt.LOAD:
            self.set_context(context_from_checkpoint(tpt.LOAD, tpt))
        else:
            self.set_context(WordsContext(tpt.CTX_INIT, tpt.N_CTX, seed=self.seed,
                                          class_token_position=tpt.CLASS_TOKEN_POSITION))

    def set_context(self, source: ContextSource) -> None:
        """Start every test image from ``source`` (words, or a checkpoint's context)."""
        self.context = source
        log.info(f"TPT: each test image starts from {source.describe()}")

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """``--model-dir/--load-epoch``: start from that checkpoint (kind recognised by its keys)."""
        if not directory:
            log.info("Note that load_model() is skipped as no pretrained model is given")
            return
        if self.method_cfg.LOAD:
            raise UserValueError(f'Both --model-dir "{directory}" and TRAINER.TPT.LOAD "{self.method_cfg.LOAD}" name a '
                                 "checkpoint to start from; give one")
        self.set_context(context_from_checkpoint(directory, self.method_cfg, epoch=epoch))

    # ------------------------------------------------------------------------------------- the method
    def start_set(self, classnames: list[str]) -> tuple:
        learner = self.context.learner(classnames, self.clip_model).to(self.device)
        learner.requires_grad_(False)
        return learner, PromptTuner(learner, self.text_encoder, self.logit_scale, self.settings, self.scaler)

    def adapt(self, state: tuple, features: torch.Tensor) -> torch.Tensor:
        learner, tuner = state
        init = self.context.initial_context(learner, features[:, 0])
        return tuner.tune(normalize(features), init, same_start=self.context.shared).logits

    def method_detail(self) -> dict:
        tpt = self.method_cfg
        return {"selection_p": tpt.SELECTION_P, "steps": tpt.STEPS, "lr": tpt.LR, "weight_decay": tpt.WEIGHT_DECAY}

    def method_fingerprint(self) -> str:
        return self.context.fingerprint()

    def summary_params(self) -> tuple:
        return self.settings.steps, self.settings.lr

    def run_record_extra(self) -> dict:
        """TPT's part of ``run.json``: ``tpt`` (initial context, settings, shard). The per-dataset metrics
        (``set_results``) are written by the run record itself as ``metrics_per_dataset``."""
        tpt = self.method_cfg
        extra = {
            "tpt": {
                "init": self.context.kind, "init_detail": self.context.describe(), "seed": self.seed,
                "shard": shard_name(self.shard), "test_sets": list(self.set_names), "n_views": tpt.N_VIEWS,
                "selection_p": tpt.SELECTION_P, "steps": tpt.STEPS, "lr": tpt.LR, "prec": self.prec,
                "batch_images": tpt.BATCH_IMAGES, "gpu_views": bool(tpt.GPU_VIEWS),
            },
        }
        if not self.cfg.DATASET.NAME:  # the datasets came from TRAINER.TPT.TEST_SETS
            extra["dataset"] = next(iter(self.set_names.values()))
        return extra
