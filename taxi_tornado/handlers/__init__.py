"""Tornado handlers: the only code that knows about Tornado's request cycle."""
