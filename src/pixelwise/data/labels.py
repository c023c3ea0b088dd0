"""What the values of a predicted mask mean: one :class:`LabelSet` of names and colours.

A model with K > 1 outputs predicts mask values 0..K-1, one per class name. A binary model
(one logit, then a threshold) predicts 0 and 1; trained with one class name (``["vessel"]``)
its value 0 takes the background's name, trained with two (``["background", "vessel"]``)
it keeps both. Every value gets a colour: the palette's where it gives one, else the
PASCAL VOC colour map's (:func:`~pixelwise.report.visualize.default_palette`) for that value.

The checkpoint, the dataset spec, the :class:`~pixelwise.inference.predict.Predictor` and the
server all take their label set from here, so a mask reads the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ..report.visualize import default_palette

RGB = tuple[int, int, int]
BACKGROUND = "background"


@dataclass(frozen=True)
class LabelSet:
    """The name and colour of every value a mask can hold.

    Build it with :meth:`from_names` (or :meth:`from_spec`, :meth:`from_metadata`,
    :meth:`from_count`), which apply the rules in the module docstring.

    Attributes:
        names: the name of mask value ``i`` is ``names[i]``.
        palette: the ``(r, g, b)`` colour of each value, one per name.
        binary: the model has one logit: the mask holds 0 (background) and 1.
        background: the name given to value 0 of a binary model named with one class.
    """

    names: tuple[str, ...]
    palette: tuple[RGB, ...]
    binary: bool = False
    background: str = BACKGROUND

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a label set needs at least one class name")
        if len(self.palette) != len(self.names):
            raise ValueError(f"{len(self.palette)} colours for {len(self.names)} class names")
        if self.binary and len(self.names) != 2:
            raise ValueError(f"a binary label set has 2 values, got {len(self.names)} names")

    @property
    def num_classes(self) -> int:
        """Number of mask values."""
        return len(self.names)

    @classmethod
    def from_names(cls, class_names: Sequence[str], palette: Sequence[Sequence[int]] | None = None,
                   num_outputs: int | None = None, background: str = BACKGROUND) -> "LabelSet":
        """The label set of a model with ``num_outputs`` logits trained on ``class_names``.

        Args:
            class_names: the names the model was trained with.
            palette: their colours (any length: missing ones come from the default palette,
                extra ones are dropped); None for the default palette.
            num_outputs: channels of the model's logits (None: one per class name).
            background: the name of a one-name binary model's value 0.

        Raises:
            ValueError: the names do not fit the outputs (one per output, or one or two for
                a one-logit model).
        """
        names = [str(n) for n in class_names]
        outputs = len(names) if num_outputs is None else int(num_outputs)
        if outputs != len(names) and not (outputs == 1 and 1 <= len(names) <= 2):
            raise ValueError(f"{len(names)} class name(s) ({', '.join(names)}) for a model "
                             f"with {outputs} outputs")
        colours = [tuple(int(v) for v in c) for c in palette] if palette is not None else []
        if outputs == 1 and len(names) == 1:
            names = [background, *names]
            if len(colours) == 1:  # the colour was the class's: value 1
                colours = [default_palette(1)[0], *colours]
        colours = (colours + default_palette(len(names))[len(colours):])[: len(names)]
        return cls(tuple(names), tuple(colours), binary=outputs == 1, background=background)

    @classmethod
    def from_spec(cls, spec: Any, num_outputs: int | None = None) -> "LabelSet":
        """The label set of a dataset spec (its class names and palette)."""
        return cls.from_names(spec.class_names, spec.palette, num_outputs)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "LabelSet":
        """The label set of checkpoint or export metadata: ``class_names``, ``palette`` and
        ``num_outputs`` (exports written before it was recorded: one per class name)."""
        return cls.from_names(meta["class_names"], meta.get("palette"), meta.get("num_outputs"))

    @classmethod
    def from_count(cls, num_classes: int) -> "LabelSet":
        """``num_classes`` unnamed classes (``"class 0"``, ...) in the default colours."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        return cls.from_names([f"class {i}" for i in range(num_classes)])


def class_pixels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each value ``0..num_classes - 1`` in a mask (int64 ``(num_classes,)``)."""
    counts = np.bincount(np.asarray(mask).ravel().astype(np.int64), minlength=num_classes)
    return counts[:num_classes]


def class_areas(counts: np.ndarray, names: Sequence[Hashable]) -> dict[Any, dict[str, float]]:
    """``{names[i]: {"pixels", "fraction"}}`` from the pixel counts of :func:`class_pixels`
    (of one mask, or summed over many); the fractions are of all pixels counted."""
    total = max(int(np.sum(counts)), 1)
    return {name: {"pixels": int(counts[i]), "fraction": int(counts[i]) / total}
            for i, name in enumerate(names)}
