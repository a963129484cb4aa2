"""Pure numeric functions: no I/O, no state. Fusion arithmetic lives here."""
