"""Model cards, engines and the delineation pipeline: no Qt, no torch."""
