"""Errors raised by interventions. Every message says what failed, where, and how to fix it."""
from __future__ import annotations


class InterventionError(ValueError):
    """Base class of intervention errors (also a ValueError, so ``except ValueError`` still works)."""


class EvaluationError(InterventionError):
    """Behavioural evaluation got unusable input (data source, protocol, stimuli, output folder)."""
