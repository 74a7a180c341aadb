"""Pretraining objectives: one file per method, registered by name (see base.py)."""

from geossl.objectives.base import (Objective, TeacherSpec, Variables, available, create,
                                    register)

__all__ = ["Objective", "TeacherSpec", "Variables", "available", "create", "register"]
