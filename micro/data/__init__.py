"""Offline datasets, read: D4RL-format HDF5 files (local or downloaded) and Minari datasets,
as transitions plus the simulator to evaluate on. Making datasets is ``micro.datagen``'s job."""
