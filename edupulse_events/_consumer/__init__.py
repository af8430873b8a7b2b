"""The consumer's threads: the loop thread and its pump (``_loop``), the messages in callers' hands
(``_message``), ``run()``'s handler threads and stop (``_running``), counters (``_tally``),
CONSUMER spans (``_tracing``) and the database inbox (``_inbox``). `NatsConsumer` in
``consumer.py`` is the public face; the NATS side is ``_nats._pull``."""
