"""Captions of toy-world images, as the micro CLIP saw them in pretraining.

A caption names the object's shape always, its colour and pattern usually, its size and position
sometimes, after one of a few openings ("a photo of a red striped circle on the left."). The shape
is never left out, so a bare attribute ("a photo of a striped.", the ToyWorldPatterns prompt) is a
description pretraining never showed. Crops of an image (half of the pretraining batches) are
captioned without size and position, which a crop changes.
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


def sample_caption(scene: Scene, rng: np.random.Generator, framed: bool = True) -> tuple[str, dict[str, str]]:
    """(caption, what it mentions): a random description of ``scene`` drawn from ``rng``.

    The mentions map ``colour``/``pattern``/``shape``/``size``/``position`` to the words used, so a
    caption can be checked against any other image (:func:`consistency`). ``framed`` False (a crop of
    the image) leaves out size and position, which a crop changes; the draws from ``rng`` are the same.
    """
    combo = scene.combo
    mentions = {"shape": combo.shape}
    words = []
    if rng.uniform() < MENTION_SIZE and framed:
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
    if rng.uniform() < MENTION_POSITION and framed:
        mentions["position"] = scene.position_word
        text += f" {scene.position_word}"
    return text + ".", mentions


def scene_facts(scene: Scene, framed: bool = True) -> dict[str, str]:
    """Everything a caption could say about ``scene`` (without size and position for a crop of it)."""
    facts = {"colour": scene.combo.colour, "pattern": scene.combo.pattern, "shape": scene.combo.shape}
    if framed:
        facts.update(size=scene.size_word, position=scene.position_word)
    return facts


def consistency(mentions: Sequence[dict[str, str]], facts: Sequence[dict[str, str]]) -> np.ndarray:
    """``(len(mentions), len(facts))`` booleans: caption i describes image j (its :func:`scene_facts`)
    correctly; a caption that mentions what image j's facts leave open does not.

    Used as the positives of the contrastive loss: a caption that leaves out the colour fits every
    image of its shape and pattern, not only its own.
    """
    return np.array([[all(fact.get(k) == v for k, v in said.items()) for fact in facts] for said in mentions])


def caption_words() -> list[str]:
    """Every word a caption (or a toy-world class name in a prompt) can contain, plus the full stop."""
    words: set[str] = {"."}
    for phrase in (*OPENINGS, *POSITIONS, *SIZES, *COLOURS, *PATTERNS, *SHAPES):
        words.update(phrase.split())
    return sorted(words)
