"""Sans-I/O protocol machines: bytes and `now` in, frames and effects out."""
