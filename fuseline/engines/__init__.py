"""Engines: what runs steps. ``Worker`` (also known as ``ProcessEngine``) is the loop of a
worker on a broker; ``PoolEngine`` runs a whole workflow in this process."""

from .pool import PoolEngine
from .process import ProcessEngine
from .worker import Worker

__all__ = ["PoolEngine", "ProcessEngine", "Worker"]
