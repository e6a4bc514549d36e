"""The emulated training chip: numerics (C-accelerated), engine, cost model, firmware."""
