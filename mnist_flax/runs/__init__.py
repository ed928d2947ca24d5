"""The run directory: its files and lock, Orbax checkpoints with one verified restore, preemption."""
