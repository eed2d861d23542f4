"""Every SQL statement ``SqlBroker`` runs, named entity-first, one catalogue per concern.

Each catalogue is a class built once per dialect (``for_dialect``), whose
attributes are SQLAlchemy Core statements that say what they guarantee.
Writes that depend on a lease are guarded in their WHERE clause (state,
holder, attempt) and their row count or RETURNING rows are checked by the
caller: a worker that lost its lease changes nothing. Statements take
parameters only (prefixed ``p_``); no SQL is built from values.

PostgreSQL runs the hottest operations as single statements instead; those
live in :mod:`..pg_statements`, under the same names as the Core statements
they stand in for.
"""
