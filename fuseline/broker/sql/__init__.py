"""The SQL broker: PostgreSQL (psycopg 3) and SQLite through SQLAlchemy Core."""

from .broker import SqlBroker

__all__ = ["SqlBroker"]
