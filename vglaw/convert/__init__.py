"""Converters from other implementations' checkpoints."""
