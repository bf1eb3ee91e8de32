"""MICRO: model-based offline RL with a conservative Bellman operator (Liu et al., IJCAI 2024)."""

__version__ = "0.1.0"


class MicroError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


# The largest seed every RNG here accepts (numpy's legacy seeding refuses negatives and >= 2**32).
MAX_SEED = 2**31 - 1
