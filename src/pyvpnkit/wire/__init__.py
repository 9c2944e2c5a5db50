"""Pure parse/build functions for the frames the stack handles; no I/O, no clocks."""
