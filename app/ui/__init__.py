"""Qt widgets only: a thin skin over core and inference."""
