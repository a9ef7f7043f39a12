"""truncbridge: LLMs as fixed-point MPC plans with statically placed truncations."""

__version__ = "0.1.0"
