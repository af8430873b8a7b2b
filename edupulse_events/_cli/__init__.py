"""The `edupulse-events` command line: its commands (publish, tail, schema, spool, bench) and
what they share (broker settings, terminal-safe output)."""
