"""The options several commands share, each declared once with its help: where and how a model
runs (``--device``, ``--precision``, ``--batch-size``, ``--num-workers``), when an answer counts
(``--mask-threshold``, ``--min-score``, ``--min-exists``), and the checked option types."""
from __future__ import annotations

import argparse

from ..config import MASK_THRESHOLD, MIN_EXISTS, PRECISIONS

DEMO_HELP = "a vglaw checkpoint directory, training .pt or Hub id (default: the bundled demo model)"


def at_least(minimum: int):
    """An option's type: an integer of at least ``minimum`` (argparse names the option otherwise)."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return integer


def probability(text: str) -> float:
    """An option's type: a number in [0, 1] (NaN is not one)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability in [0, 1], got {text}")
    return value


def add_runtime_options(parser, *, precision: bool = True, batch_size: int | None = None,
                        num_workers: int | None = None, workers_help: str = "data loader processes",
                        batch_group=None) -> None:
    """``--batch-size`` and ``--num-workers`` (when given their defaults; into ``batch_group`` when
    given, an argument group of ``parser``), then ``--device`` and (unless told not)
    ``--precision``."""
    batches = parser if batch_group is None else batch_group
    if batch_size is not None:
        batches.add_argument("--batch-size", type=at_least(1), default=batch_size, help="expressions per forward pass")
    if num_workers is not None:
        batches.add_argument("--num-workers", type=at_least(0), default=num_workers, help=workers_help)
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one, else the CPU), cpu, "
                                                         "cuda or cuda:N")
    if precision:
        parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                            help="arithmetic of the forward pass (bf16 pays off on GPUs and CPUs with AVX-512 BF16)")


def add_answer_options(parser, *, mask_threshold: bool = True, min_score: bool = True,
                       min_exists: bool = True) -> None:
    """The thresholds that make an answer: ``--mask-threshold``, ``--min-score``, ``--min-exists``
    (those asked for, in this order)."""
    if mask_threshold:
        parser.add_argument("--mask-threshold", type=probability, default=None,
                            help="a mask pixel is the object where its probability is above this (default: the "
                                 f"checkpoint's, {MASK_THRESHOLD} unless it says otherwise)")
    if min_score:
        parser.add_argument("--min-score", type=probability, default=None,
                            help="mark answers whose score (the calibrated probability that the box is right) is "
                                 "below this as not found, instead of drawing them (needs a calibrated checkpoint)")
    if min_exists:
        parser.add_argument("--min-exists", type=probability, default=MIN_EXISTS,
                            help="a checkpoint with the existence output answers \"not found\" where the probability "
                                 f"that the expression names something in the image is below this (default {MIN_EXISTS})")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, where it has one worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
