"""LAUD backbones in torchvision's detection and instance-segmentation models."""
