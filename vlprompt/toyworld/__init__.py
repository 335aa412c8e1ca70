"""A procedurally generated image-text world and a micro CLIP pretrained on it.

Real CLIP weights and benchmark images cannot be downloaded everywhere, and a random-weight CLIP
predicts one class for nearly every image; the toy world makes every method's claim visible on a
laptop CPU. Its parts:

* :mod:`~vlprompt.toyworld.world`: attributes (colour, pattern, shape), classes built from them and
  the combinations held out of pretraining;
* :mod:`~vlprompt.toyworld.render`: images in four domains (photo, sketch, rendition, adversarial);
* :mod:`~vlprompt.toyworld.captions`: the captions pretraining used;
* :mod:`~vlprompt.toyworld.datasets`: the datasets on disk (``python -m vlprompt.toyworld --root DIR``),
  registered as ``ToyWorld``, ``ToyWorldSketch``, ``ToyWorldR``, ``ToyWorldA``, ``ToyWorldNovel`` and
  ``ToyWorldPatterns`` (``configs/datasets/toyworld*.yaml``);
* :mod:`~vlprompt.toyworld.micro_clip`: the micro CLIP; its weights ship as ``weights/micro_clip.pt``
  and load with ``MODEL.BACKBONE.NAME micro-clip``. ``scripts/toyworld/pretrain_micro_clip.py`` made them.
"""

from vlprompt.toyworld.datasets import dataset_specs, write_toyworld
from vlprompt.toyworld.world import ToyClass

__all__ = ["ToyClass", "dataset_specs", "write_toyworld"]
