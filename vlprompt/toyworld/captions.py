"""Captions of toy-world images, as the micro CLIP saw them in pretraining.

A caption names the object's shape always, its colour and pattern usually, its size and position
sometimes, after one of a few openings ("a photo of a red striped circle on the left."). The shape
is never left out: a bare attribute ("a photo of a striped.") is something pretraining never showed,
which is what makes the attribute-only class sets a case where the hand-crafted prompt is poor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlprompt.toyworld.render import Scene
from vlprompt.toyworld.world import COLOURS, PATTERNS, POSITIONS, SHAPES, SIZES

# Openings of different lengths, so the text encoder's positions up to about 20 tokens get trained
# (CoOp's default 16 context tokens put the class name there).
OPENINGS: tuple[str, ...] = (
    "a photo of a",
    "a",
    "a picture of a",
    "an image of a",
    "this is a photo of a",
    "here we can see a photo of a",
    "in this picture there is a",
    "look at this nice photo of a",
)
OPENING_WEIGHTS: tuple[float, ...] = (0.4, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05)
DROP_COLOUR = 0.15
DROP_PATTERN = 0.15
MENTION_SIZE = 0.3
MENTION_POSITION = 0.3


def sample_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """(caption, what it mentions): a random description of ``scene`` drawn from ``rng``.

    The mentions map ``colour``/``pattern``/``shape``/``size``/``position`` to the words used, so a
    caption can be checked against any other image (:func:`consistency`).
    """
    combo = scene.combo
    mentions = {"shape": combo.shape}
    words = []
    if rng.uniform() < MENTION_SIZE:
        mentions["size"] = scene.size_word
        words.append(scene.size_word)
    if rng.uniform() >= DROP_COLOUR:
        mentions["colour"] = combo.colour
        words.append(combo.colour)
    if rng.uniform() >= DROP_PATTERN:
        mentions["pattern"] = combo.pattern
        words.append(combo.pattern)
    words.append(combo.shape)
    opening = OPENINGS[int(rng.choice(len(OPENINGS), p=OPENING_WEIGHTS))]
    text = f"{opening} {' '.join(words)}"
    if rng.uniform() < MENTION_POSITION:
        mentions["position"] = scene.position_word
        text += f" {scene.position_word}"
    return text + ".", mentions


def scene_facts(scene: Scene) -> dict[str, str]:
    """Everything a caption could say about ``scene``."""
    return {
        "colour": scene.combo.colour, "pattern": scene.combo.pattern, "shape": scene.combo.shape,
        "size": scene.size_word, "position": scene.position_word,
    }


def consistency(mentions: Sequence[dict[str, str]], scenes: Sequence[Scene]) -> np.ndarray:
    """``(len(mentions), len(scenes))`` booleans: caption i describes image j correctly.

    Used as the positives of the contrastive loss: a caption that leaves out the colour fits every
    image of its shape and pattern, not only its own.
    """
    facts = [scene_facts(scene) for scene in scenes]
    return np.array([[all(fact[k] == v for k, v in said.items()) for fact in facts] for said in mentions])


def caption_words() -> list[str]:
    """Every word a caption (or a toy-world class name in a prompt) can contain, plus the full stop."""
    words: set[str] = {"."}
    for phrase in (*OPENINGS, *POSITIONS, *SIZES, *COLOURS, *PATTERNS, *SHAPES):
        words.update(phrase.split())
    return sorted(words)
