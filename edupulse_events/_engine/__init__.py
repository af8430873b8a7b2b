"""The publisher thread: its worker and supervisor, the bookkeeping of outstanding events, the
attempts and their retries, the JetStream and core senders, telemetry, restarts after a crash,
closing, and the processes it runs in (fork, exit)."""
