"""Everyday sentences about nothing in particular: the baseline text that mean ablation
averages over and the concept finder compares a concept's texts against."""

from __future__ import annotations

REFERENCE_TEXTS: tuple[str, ...] = (
    "The weather was mild this morning, so we walked to the station.",
    "She opened the window and the smell of fresh bread filled the kitchen.",
    "Our meeting moved to Thursday because the manager was travelling.",
    "He read the instructions twice before assembling the small wooden shelf.",
    "The museum is closed on Mondays but open late on Fridays.",
    "After dinner the children played a board game in the living room.",
    "Prices at the market rose slightly during the winter months.",
    "The train was delayed by twenty minutes due to works on the line.",
    "I keep my keys in a bowl next to the front door.",
    "The report summarises the results of the survey in three tables.",
    "A light rain fell over the hills as the sun went down.",
    "They painted the fence white and planted flowers along the path.",
)
"""Everyday sentences used for mean ablation when no reference texts are given."""
