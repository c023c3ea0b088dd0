"""Evaluation metrics: a device-side confusion matrix with pure metric functions of it, and
boundary metrics (boundary F1, Hausdorff 95) on label maps."""
from .boundary import boundary_f1, boundary_f1_per_class, hausdorff95, surface
from .confusion import (ConfusionMatrix, compute_metrics, fw_iou, mean_accuracy, mean_dice,
                        mean_iou, per_class_accuracy, per_class_dice, per_class_iou,
                        per_class_precision, per_class_recall, pixel_accuracy)

# The headline numbers of a confusion matrix (keys of compute_metrics), in the order that
# logs, reports and the command line show them.
SUMMARY_METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "dice")

__all__ = ["ConfusionMatrix", "compute_metrics", "pixel_accuracy", "mean_accuracy", "mean_iou",
           "fw_iou", "mean_dice", "per_class_iou", "per_class_dice", "per_class_precision",
           "per_class_recall", "per_class_accuracy", "boundary_f1", "boundary_f1_per_class",
           "hausdorff95", "surface", "SUMMARY_METRICS"]
