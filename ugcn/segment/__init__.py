"""Monte Carlo dropout U-Nets: architectures, training, checkpoints and whole-volume inference.

``make_volume_fn(model, stochastic=True)`` is the entry point for MC-dropout sampling (see
:mod:`ugcn.segment.model`).
"""
from ugcn.segment.checkpoint import is_model_dir, load_model, save_model
from ugcn.segment.model import (
    SegmentationModel,
    check_image,
    init_model,
    make_volume_fn,
    predict_mask,
    predict_probabilities,
)
from ugcn.segment.normalize import Normalization
from ugcn.segment.train import NO_AUGMENTATION, Augmentation, dice_ce_loss, train_model
from ugcn.segment.unet import UNet, UNetConfig, logits_to_probs

__all__ = [
    "Augmentation",
    "NO_AUGMENTATION",
    "Normalization",
    "SegmentationModel",
    "UNet",
    "UNetConfig",
    "check_image",
    "dice_ce_loss",
    "init_model",
    "is_model_dir",
    "load_model",
    "logits_to_probs",
    "make_volume_fn",
    "predict_mask",
    "predict_probabilities",
    "save_model",
    "train_model",
]
