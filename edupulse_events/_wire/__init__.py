"""The wire's internals, behind `edupulse_events.codec`: frozen maps and their checks, JSON text
as serde reads it, the encoders, and the fast and reference decoders. No I/O."""
