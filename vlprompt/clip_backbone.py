"""``vlprompt.clip_backbone`` is :mod:`vlprompt.modeling.backbones.openai` (the same module object), where
OpenAI CLIP weights are found and checked; the family-independent loaders are :mod:`vlprompt.modeling.factory`."""

import sys

import vlprompt.modeling.backbones.openai

sys.modules[__name__] = vlprompt.modeling.backbones.openai
