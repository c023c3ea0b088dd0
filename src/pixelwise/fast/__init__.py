"""Speed kernels applied from outside to a built model and optimiser."""
