"""The reference's ImageNet preprocessing, written with torch ops on uint8 (C, H, W) tensors.

Training: a random *square* crop (area fraction uniform in [0.08, 1], edge = round(sqrt(area)), no aspect-ratio
jitter, up to 10 tries, else the last try's square zero-filled where it leaves the image), resized to 224x224
by bilinear interpolation without anti-aliasing (what OpenCV's INTER_LINEAR computes: half-pixel centres,
rounded to the nearest grey level), then lighting noise clipped to 0..255 and truncated to uint8, then a
horizontal flip. Evaluation: the shorter side resized to 256 (the other to int(256 * long / short + 0.5)) by
the same interpolation, then a 224 centre crop. torchvision's RandomResizedCrop / anti-aliased Resize see
other pixels (`--imagenet_pipeline torchvision` in stage 3 keeps them).
"""
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SquareBox:
    top: int            # may be negative (or the box may pass the far edge) for the zero-filled fallback
    left: int
    edge: int


def square_crop_box(height, width, scale=(0.08, 1.0), tries=10, rng=random):
    """The reference's square crop: up to `tries` draws of an area fraction and an offset; the first square
    that fits is taken, else the last one drawn (partly outside the image)."""
    for _ in range(tries):
        edge = round(math.sqrt(height * width * rng.uniform(*scale)))
        d_h, d_w = height - edge, width - edge
        left = rng.randint(min(d_w, 0), max(d_w, 0))
        top = rng.randint(min(d_h, 0), max(d_h, 0))
        if d_h >= 0 and d_w >= 0:
            break
    return SquareBox(top, left, edge)


def crop_zero_filled(img, box):
    """img (C, H, W) cut to box; the part of the box outside the image is zeros."""
    C, H, W = img.shape
    out = img.new_zeros((C, box.edge, box.edge))
    y0, x0 = max(box.top, 0), max(box.left, 0)
    y1, x1 = min(box.top + box.edge, H), min(box.left + box.edge, W)
    if y1 > y0 and x1 > x0:
        out[:, y0 - box.top:y1 - box.top, x0 - box.left:x1 - box.left] = img[:, y0:y1, x0:x1]
    return out


def resize_bilinear(img, height, width):
    """uint8 (C, H, W) -> uint8 (C, height, width): bilinear, half-pixel centres, no anti-aliasing, rounded to
    nearest, as OpenCV's INTER_LINEAR (which computes in 11-bit fixed point: within 1 grey level of this)."""
    x = F.interpolate(img[None].float(), size=(height, width), mode='bilinear', align_corners=False,
                      antialias=False)[0]
    return x.round_().clamp_(0, 255).to(torch.uint8)


def shorter_side_size(height, width, size=256):
    """(new height, new width): the shorter side becomes `size`, the other int(size / short * long + 0.5)."""
    if height < width:
        return size, int(size / height * width + 0.5)
    return int(size / width * height + 0.5), size


class SquareCropResize:
    """Training crop of the reference: `square_crop_box`, zero-filled fallback, bilinear resize to size x size."""

    def __init__(self, size=224, scale=(0.08, 1.0), tries=10, rng=random):
        self.size, self.scale, self.tries, self.rng = size, scale, tries, rng

    def __call__(self, img):
        box = square_crop_box(img.shape[1], img.shape[2], self.scale, self.tries, self.rng)
        return resize_bilinear(crop_zero_filled(img, box), self.size, self.size)


class ShorterSideResize:
    """Evaluation resize of the reference (see `shorter_side_size`)."""

    def __init__(self, size=256):
        self.size = size

    def __call__(self, img):
        return resize_bilinear(img, *shorter_side_size(img.shape[1], img.shape[2], self.size))


class QuantizedLighting:
    """AlexNet PCA lighting as the reference applies it to a uint8 image: on [0, 1] values add
    eigvec @ (eigval * alpha), alpha ~ N(0, alphastd) per image, then x255, clip to 0..255, truncate to uint8."""

    def __init__(self, eigval, eigvec, alphastd=0.1, generator=None):
        self.eigval, self.eigvec = torch.tensor(eigval), torch.tensor(eigvec)
        self.alphastd, self.generator = alphastd, generator

    def __call__(self, img):
        alpha = torch.randn(3, generator=self.generator) * self.alphastd
        rgb = self.eigvec @ (self.eigval * alpha)                               # (3,)
        x = (img.float() / 255 + rgb.view(3, 1, 1)) * 255
        return x.clamp_(0, 255).to(torch.uint8)                                 # truncation, as numpy's uint8 cast
