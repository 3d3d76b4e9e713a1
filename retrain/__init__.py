"""Stage 3: DARTS-style retraining of a fixed genotype (CIFAR, ImageNet)."""
