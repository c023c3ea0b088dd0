"""HTTP serving of a segmentation model: ``create_app(predictor)`` and the web page."""
from .app import create_app, describe_predictor

__all__ = ["create_app", "describe_predictor"]
