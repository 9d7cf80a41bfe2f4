"""Folding the stripes of the maintained aggregates: ``app/storage/aggregates.py``, which folds the
dead-letter aggregates (migration 0004) together with the others."""

from __future__ import annotations

from app.storage.aggregates import FOLD_BATCH, fold_stripes

__all__ = ["FOLD_BATCH", "fold_stripes"]
