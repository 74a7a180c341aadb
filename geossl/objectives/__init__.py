"""Pretraining objectives: one file per method, registered by name (see base.py)."""

from geossl.objectives.base import Objective, Variables, available, create, register

__all__ = ["Objective", "Variables", "available", "create", "register"]
