"""Qualify: the PQL definition language, its evaluation on usage state, and transitions applied exactly once."""
