"""The transactional outbox's machinery (private): the table and its row format (`_schema`), one
store per database family behind one interface (`_stores`), resolving the caller's connection
(`_connections`), the relay loop (`_relay`) and its telemetry (`_otel`). The public face is
:mod:`edupulse_events.outbox`. Nothing here imports nats-py: the relay is a publisher user."""
