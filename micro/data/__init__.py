"""Offline datasets: D4RL-format HDF5 files, read, written, downloaded and made in the simulator."""
