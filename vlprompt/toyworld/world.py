"""The toy world's vocabulary: attributes, the classes built from them, and which combinations are held out.

A class is a (colour, pattern, shape) combination such as "red striped circle", or a partial one
("striped") for the attribute-only class sets. Of the 6 × 4 × 6 = 144 full combinations, 36 are held
out of pretraining by a fixed rule: every attribute value and every pair of values still occurs in
the pretraining captions, but these exact combinations never do, so a class made of one is "novel"
to the micro CLIP in the sense base-to-novel experiments need.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

# Named colours as RGB. The hues are far apart so a 56-pixel image shows them clearly; every name is
# one BPE token of CLIP's tokenizer.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "green": (46, 160, 67),
    "blue": (38, 84, 214),
    "yellow": (240, 200, 36),
    "purple": (132, 58, 186),
    "orange": (245, 124, 28),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
ATTRIBUTES: tuple[str, ...] = ("colour", "pattern", "shape")

# Nuisance words the pretraining captions sometimes mention (never part of a class).
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom", "in the center")


@dataclass(frozen=True, order=True)
class ToyClass:
    """A class of the world: a full or partial attribute combination (``None`` = any value)."""

    colour: str | None = None
    pattern: str | None = None
    shape: str | None = None

    def __post_init__(self) -> None:
        for attribute, allowed in (("colour", tuple(COLOURS)), ("pattern", PATTERNS), ("shape", SHAPES)):
            value = getattr(self, attribute)
            if value is not None and value not in allowed:
                raise ValueError(f'ToyClass {attribute} "{value}" is not one of {", ".join(allowed)}')
        if self.colour is None and self.pattern is None and self.shape is None:
            raise ValueError("ToyClass needs at least one of colour, pattern, shape")

    @property
    def name(self) -> str:
        """The class name as prompts use it: the given attributes in caption order ("red striped circle")."""
        return " ".join(value for value in (self.colour, self.pattern, self.shape) if value is not None)

    @property
    def folder(self) -> str:
        """The image folder name (spaces as underscores, the CoOp convention)."""
        return self.name.replace(" ", "_")

    @property
    def is_full(self) -> bool:
        return None not in (self.colour, self.pattern, self.shape)

    def matches(self, combo: ToyClass) -> bool:
        """Whether the full combination ``combo`` belongs to this (possibly partial) class."""
        return all(getattr(self, a) is None or getattr(self, a) == getattr(combo, a) for a in ATTRIBUTES)


@cache
def all_combinations() -> tuple[ToyClass, ...]:
    """Every full (colour, pattern, shape) combination, colours outermost."""
    return tuple(ToyClass(c, p, s) for c, p, s in itertools.product(COLOURS, PATTERNS, SHAPES))


def is_held_out(combo: ToyClass) -> bool:
    """The fixed rule for combinations never shown in pretraining: index sum divisible by 4.

    For each (colour, shape) pair exactly one pattern is held out, and every pair of attribute values
    keeps at least one pretrained combination, so each word is learnt in every context but these.
    """
    if not combo.is_full:
        raise ValueError(f'"{combo.name}" is not a full combination')
    index = list(COLOURS).index(combo.colour) + PATTERNS.index(combo.pattern) + SHAPES.index(combo.shape)
    return index % 4 == 0


@cache
def seen_combinations() -> tuple[ToyClass, ...]:
    """The 108 combinations the micro CLIP is pretrained on."""
    return tuple(combo for combo in all_combinations() if not is_held_out(combo))


@cache
def held_out_combinations() -> tuple[ToyClass, ...]:
    """The 36 combinations never shown in pretraining (the source of novel classes)."""
    return tuple(combo for combo in all_combinations() if is_held_out(combo))


def attribute_classes(attribute: str) -> list[ToyClass]:
    """One partial class per value of ``attribute`` ("colour", "pattern" or "shape")."""
    values = {"colour": tuple(COLOURS), "pattern": PATTERNS, "shape": SHAPES}
    if attribute not in values:
        raise ValueError(f'attribute "{attribute}" is not one of {", ".join(values)}')
    return [ToyClass(**{attribute: value}) for value in values[attribute]]
