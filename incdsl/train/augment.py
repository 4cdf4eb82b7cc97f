"""Training augmentation as batch tensor ops on the training device, and the input normalisation.

The Inception crop (GoogLeNet, section 6): a patch covering a uniformly drawn 8%-100% of the image area,
with an aspect ratio drawn log-uniformly from 3/4-4/3, resized to the input; 10 tries per image, the
whole image when none fits (as torchvision's RandomResizedCrop). A crop and its optional mirror are one
affine ``grid_sample``. Photometric distortion (Howard 2013): brightness, contrast and saturation, each
scaled by a factor drawn from [1 - p, 1 + p]. Random numbers come from a CPU generator the trainer
seeds every epoch, so a batch's augmentation is the same on any device and after a resume.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from incdsl.train.recipes import Augment

CROP_TRIES = 10


def to_input(images: Tensor) -> Tensor:
    """uint8 images to the network's input range [-1, 1] (as Inception v3's preprocessing)."""
    return images.float().div_(127.5).sub_(1.0)


def augment_batch(images: Tensor, augment: Augment, generator: torch.Generator) -> Tensor:
    """uint8 ``(B, C, H, W)`` training images to augmented network inputs on the same device."""
    pixels = images.float().div_(255.0)
    boxes = sample_crop_boxes(len(images), pixels.shape[-2:], augment, generator)
    flips = uniform(len(images), 0.0, 1.0, generator) < (0.5 if augment.flip else 0.0)
    pixels = crop_and_resize(pixels, boxes.to(pixels.device), flips.to(pixels.device))
    if augment.photometric > 0:
        pixels = distort_colors(pixels, augment.photometric, generator)
    return pixels.mul_(2.0).sub_(1.0)


def uniform(shape, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.empty(shape).uniform_(low, high, generator=generator)


def sample_crop_boxes(count: int, size, augment: Augment, generator: torch.Generator) -> Tensor:
    """``(count, 4)`` boxes ``(left, top, width, height)``, in fractions of the image's width and height."""
    tries = (count, CROP_TRIES)
    area = uniform(tries, *augment.crop_area, generator)
    aspect = torch.exp(uniform(tries, *(math.log(a) for a in augment.crop_aspect), generator))
    height_over_width = size[0] / size[1]
    width = torch.sqrt(area * aspect * height_over_width)
    height = torch.sqrt(area / aspect / height_over_width)
    fits = (width <= 1) & (height <= 1)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits in the image
    width = torch.where(fits.any(1), width.gather(1, first)[:, 0], 1.0)
    height = torch.where(fits.any(1), height.gather(1, first)[:, 0], 1.0)
    left = uniform(count, 0.0, 1.0, generator) * (1 - width)
    top = uniform(count, 0.0, 1.0, generator) * (1 - height)
    return torch.stack([left, top, width, height], dim=1)


def crop_and_resize(pixels: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
    """Each image's box resized to the full image size, mirrored where ``flips`` is true."""
    left, top, width, height = boxes.unbind(1)
    theta = torch.zeros(len(pixels), 2, 3, device=pixels.device)
    theta[:, 0, 0] = torch.where(flips, -width, width)
    theta[:, 0, 2] = 2 * left + width - 1  # box center in grid coordinates [-1, 1]
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2 * top + height - 1
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def distort_colors(pixels: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation, each scaled by a factor in [1 - strength, 1 + strength]."""
    factors = uniform((3, len(pixels), 1, 1, 1), 1 - strength, 1 + strength, generator).to(pixels.device)
    pixels = pixels * factors[0]
    mean = grayscale(pixels).mean(dim=(1, 2, 3), keepdim=True)
    pixels = (pixels - mean) * factors[1] + mean
    if pixels.shape[1] == 3:
        gray = grayscale(pixels)
        pixels = (pixels - gray) * factors[2] + gray
    return pixels.clamp_(0.0, 1.0)


def grayscale(pixels: Tensor) -> Tensor:
    """Luma (ITU-R 601), ``(B, 1, H, W)``; a one-channel image is its own."""
    if pixels.shape[1] != 3:
        return pixels.mean(dim=1, keepdim=True)
    weights = torch.tensor([0.299, 0.587, 0.114], device=pixels.device).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)


def mix_batch(
    inputs: Tensor, mixup: float, cutmix: float, generator: torch.Generator
) -> tuple[Tensor, float]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of each input with the batch's reversed
    order, as timm: a weight ``lam`` drawn from Beta(alpha, alpha); with both on, either one with
    probability 1/2. Mixup blends whole images, CutMix pastes a box of about ``1 - lam`` of the area
    (``lam`` is then the area left). Returns the mixed inputs and ``lam``: the loss is ``lam x`` the
    loss on the labels plus ``(1 - lam) x`` the loss on the reversed labels. Nothing to do: lam 1."""
    if not mixup and not cutmix:
        return inputs, 1.0
    use_cutmix = bool(cutmix) and (not mixup or uniform(1, 0.0, 1.0, generator).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    draws = torch.randint(0, 2**31 - 1, (1,), generator=generator).item()
    lam = float(np.random.default_rng(draws).beta(alpha, alpha))
    other = inputs.flip(0)
    if not use_cutmix:
        return inputs * lam + other * (1.0 - lam), lam
    height, width = inputs.shape[-2:]
    cut_h, cut_w = round(height * math.sqrt(1.0 - lam)), round(width * math.sqrt(1.0 - lam))
    center_y = int(torch.randint(0, height, (1,), generator=generator))
    center_x = int(torch.randint(0, width, (1,), generator=generator))
    top, bottom = max(0, center_y - cut_h // 2), min(height, center_y + cut_h - cut_h // 2)
    left, right = max(0, center_x - cut_w // 2), min(width, center_x + cut_w - cut_w // 2)
    mixed = inputs.clone()
    mixed[..., top:bottom, left:right] = other[..., top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)
