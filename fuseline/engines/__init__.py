"""Engines: what runs steps. ``ProcessEngine`` is a worker on a broker;
``PoolEngine`` runs a whole workflow in this process."""

from .pool import PoolEngine
from .process import ProcessEngine

__all__ = ["PoolEngine", "ProcessEngine"]
