"""The durable spool: the SQLite store of one process, its files and their checks, the adoption
of files whose process died, and how a publisher spools and replays through it."""
