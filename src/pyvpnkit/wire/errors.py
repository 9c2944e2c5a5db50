"""The one exception type every codec raises, so the loop can count and drop."""


class ParseError(ValueError):
    """A frame or header is malformed (truncated, bad length, bad checksum...)."""
