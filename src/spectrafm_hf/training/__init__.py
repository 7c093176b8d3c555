"""Training utilities: freezing, collators, Trainer integration, metrics."""

from .freezing import FREEZE_CHOICES, freeze

__all__ = ["FREEZE_CHOICES", "freeze"]
