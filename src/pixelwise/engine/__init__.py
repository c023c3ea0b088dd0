"""Training, evaluation, prediction: the stages that run a model."""
