"""Hand-driven peers and fake worlds the unit tests share."""
