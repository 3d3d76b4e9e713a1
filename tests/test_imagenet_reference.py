"""The reference's ImageNet preprocessing (imagenet_reference.py, and data.py's ImageNet transforms built on it):
OpenCV's bilinear resize, the evaluation pipeline, the square random crop and the lighting noise on uint8 images."""
import random

import numpy as np
import pytest
import torch

import data as D
import imagenet_reference as R


@pytest.mark.parametrize('src, dst', [((37, 53), (224, 224)), ((300, 411), (224, 224)), ((448, 448), (224, 224)),
                                      ((500, 375), (341, 256)), ((17, 230), (256, 3463))])
def test_resize_matches_opencv_inter_linear(src, dst):
    cv2 = pytest.importorskip('cv2')
    img = np.random.default_rng(sum(src)).integers(0, 256, (*src, 3), dtype=np.uint8)
    ours = R.resize_bilinear(torch.from_numpy(img).permute(2, 0, 1), *dst).permute(1, 2, 0).numpy()
    theirs = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_eval_pipeline_sees_the_pixels_of_the_reference():
    """Shorter side 256 with int(256 * long / short + 0.5), OpenCV's interpolation, centre crop 224."""
    cv2 = pytest.importorskip('cv2')
    from PIL import Image
    for h, w in ((375, 500), (640, 427), (300, 300)):
        img = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = D.imagenet_transforms(False, normalize=False)(Image.fromarray(img))
        nh, nw = (256, int(256 / h * w + 0.5)) if h < w else (int(256 / w * h + 0.5), 256)
        big = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = int(round((nh - 224) / 2)), int(round((nw - 224) / 2))
        theirs = torch.from_numpy(big[top:top + 224, left:left + 224]).permute(2, 0, 1).float() / 255
        assert ours.shape == (3, 224, 224) and (ours - theirs).abs().max() <= 1 / 255 + 1e-6


def test_square_crop_geometry_distribution():
    rng = random.Random(0)
    boxes = [R.square_crop_box(100, 100, rng=rng) for _ in range(4000)]
    assert all(0 <= b.top <= 100 - b.edge and 0 <= b.left <= 100 - b.edge for b in boxes)       # always fits
    frac = np.array([b.edge ** 2 / 1e4 for b in boxes])
    assert frac.min() >= 0.0784 and frac.max() <= 1.0                      # round(sqrt(0.08 * 1e4)) = 28 -> 0.0784
    assert abs(frac.mean() - 0.54) < 0.02 and abs((frac < 0.5).mean() - 0.42 / 0.92) < 0.03   # uniform area
    # a 40x160 image: a square fits only when the area fraction is <= 0.25; otherwise after 10 tries the
    # last square is taken, partly outside the image, and zero-filled there
    boxes = [R.square_crop_box(40, 160, rng=rng) for _ in range(4000)]
    outside = [b for b in boxes if b.edge > 40]
    assert abs(len(outside) / 4000 - (1 - 0.17 / 0.92) ** 10) < 0.02
    img = torch.full((3, 40, 160), 7, dtype=torch.uint8)
    crop = R.crop_zero_filled(img, outside[0])
    rows = (crop[0] == 7).any(1)
    assert crop.shape == (3, outside[0].edge, outside[0].edge) and int(rows.sum()) == 40 and (crop[:, ~rows] == 0).all()
    out = R.SquareCropResize(224, rng=random.Random(1))(torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8))
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_lighting_clips_and_truncates_to_uint8():
    img = torch.tensor([0, 100, 200, 255], dtype=torch.uint8).view(1, 1, 4).expand(3, 1, 4).contiguous()
    strong = R.QuantizedLighting(D.IMAGENET_PCA_EIGVAL, D.IMAGENET_PCA_EIGVEC, alphastd=50.0,
                                 generator=torch.Generator().manual_seed(0))
    out = strong(img)
    assert out.dtype == torch.uint8 and ((out == 0) | (out == 255)).any()         # clipped, not wrapped
    mild = R.QuantizedLighting(D.IMAGENET_PCA_EIGVAL, D.IMAGENET_PCA_EIGVEC, generator=torch.Generator().manual_seed(1))
    alpha = torch.randn(3, generator=torch.Generator().manual_seed(1)) * 0.1
    rgb = (torch.tensor(D.IMAGENET_PCA_EIGVEC) @ (torch.tensor(D.IMAGENET_PCA_EIGVAL) * alpha)).numpy()
    expected = np.floor(np.clip((img.numpy() / 255.0 + rgb[:, None, None]) * 255, 0, 255))
    assert np.abs(mild(img).numpy().astype(int) - expected).max() <= 1
