"""Inference: from an image (tile, raster, video, folder) to labels."""
