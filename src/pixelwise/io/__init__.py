"""What pixelwise reads and writes: run configs, checkpoints, atomic files."""
