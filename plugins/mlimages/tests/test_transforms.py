"""The augmentation's geometry: crop areas and aspect ratios, the branch frequencies of the
released code and the paper, what each operation does to a known image, the eval crop."""

import math

import pytest
import torch
from fusedembed_mlimages.transforms import (
    Colour,
    EvalTransform,
    Params,
    TrainTransform,
    distort_colour,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_crop,
)


@pytest.mark.parametrize("preset, area, aspect", [("code", (0.7, 1.0), (0.75, 1.33)),
                                                   ("paper", (0.5, 1.0), (3 / 4, 4 / 3)),
                                                   ("finetune", (0.05, 1.0), (0.75, 1.33))])
def test_crops_cover_their_area_with_their_aspect(preset, area, aspect):
    t = TrainTransform(preset, 224)
    g = torch.Generator().manual_seed(0)
    H, W = 400, 400
    fractions, ratios, heights = [], [], []
    for _ in range(400):
        top, left, h, w = t.sample(H, W, g).box
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        fractions.append(h * w / (H * W))
        ratios.append(w / h)
        heights.append(h)
    assert area[0] - 1e-9 <= min(fractions) and max(fractions) <= area[1]
    # w is h * ratio rounded to a pixel: the ratio may leave its range by half a pixel over h
    slack = 0.5 / min(heights)
    assert aspect[0] - slack <= min(ratios) and max(ratios) <= aspect[1] + slack
    assert max(fractions) - min(fractions) > 0.5 * (area[1] - area[0])        # the range is used
    assert min(ratios) < aspect[0] + 0.1 and max(ratios) > aspect[1] - 0.1


def test_an_impossible_crop_falls_back_to_the_whole_image():
    # aspect 3..4 with area >= 0.9 cannot fit a square image
    assert sample_crop(100, 100, (0.9, 1.0), 0.9, (3.0, 4.0)) == (0, 0, 100, 100)


def branch_stats(preset, n=3000):
    t = TrainTransform(preset, 64)
    g = torch.Generator().manual_seed(1)
    draws = [t.sample(80, 80, g) for _ in range(n)]
    rotated = [p for p in draws if p.angle is not None]
    coloured = [p for p in draws if p.colour is not None]
    return draws, rotated, coloured


def near(count, n, p):
    return abs(count - n * p) < 4 * math.sqrt(n * p * (1 - p))


def test_released_code_rotates_a_third_and_colours_two_thirds_in_one_draw():
    draws, rotated, coloured = branch_stats("code")
    n = len(draws)
    assert near(len(rotated), n, 1 / 3) and near(len(coloured), n, 2 / 3)
    assert near(sum(p.flip for p in draws), n, 1 / 2)
    # one thread_id: the rotated third is always coloured, in order A; the other coloured third in order B
    assert all(p.colour is not None and p.colour.order == 0 for p in rotated)
    assert all(p.colour.order == 1 for p in coloured if p.angle is None)
    assert all(-45 <= p.angle <= 45 for p in rotated) and max(p.angle for p in rotated) > 40
    c = [p.colour for p in coloured]
    assert all(abs(x.brightness) <= 32 / 255 and 0.5 <= x.saturation <= 1.5 and abs(x.hue) <= 0.2
               and 0.5 <= x.contrast <= 1.5 for x in c)


def test_paper_rotates_a_quarter_and_colours_half_independently():
    draws, rotated, coloured = branch_stats("paper")
    n = len(draws)
    assert near(len(rotated), n, 0.25) and near(len(coloured), n, 0.5)
    both = sum(p.angle is not None and p.colour is not None for p in draws)
    assert near(both, n, 0.125)                                               # independent
    assert near(sum(p.colour.order for p in coloured), len(coloured), 0.5)   # both orders


def ramp(h=40, w=60):
    """Channel 0 = x / (w - 1), channel 1 = y / (h - 1), channel 2 = 0.5."""
    x = torch.linspace(0, 1, w).expand(h, w)
    y = torch.linspace(0, 1, h).unsqueeze(1).expand(h, w)
    return torch.stack([x, y, torch.full((h, w), 0.5)])


def test_crop_resize_flip_and_scale_to_minus_one_one():
    t = TrainTransform("code", 20)
    img = ramp()
    out = t.apply(img, Params((10, 30, 20, 30), False, None, None))
    assert out.shape == (3, 20, 20) and out.min() >= -1 and out.max() <= 1
    # the crop's columns 30..59 of 60: x from 30/59 to 1, rows 10..29 of 40
    assert out[0, :, 0].mean().item() == pytest.approx(2 * (30.25 / 59) - 1, abs=0.02)
    assert out[0, :, -1].mean().item() == pytest.approx(2 * (59 - 0.75) / 59 - 1, abs=0.02)
    assert out[1, 0, :].mean().item() == pytest.approx(2 * (10.25 / 39) - 1, abs=0.02)
    assert out[2].abs().max().item() < 1e-6                                   # 0.5 -> 0
    flipped = t.apply(img, Params((10, 30, 20, 30), True, None, None))
    torch.testing.assert_close(flipped, out.flip(-1))


def test_rotation_turns_the_image_counter_clockwise_with_black_corners():
    t = TrainTransform("code", 21)
    img = ramp(21, 21)
    out = t.apply(img, Params((0, 0, 21, 21), False, 90.0, None))
    # x-ramp turned 90 degrees counter-clockwise: it now falls from top to bottom
    assert out[0, 0, 10] > 0.9 and out[0, -1, 10] < -0.9
    corner = t.apply(img, Params((0, 0, 21, 21), False, 45.0, None))
    assert torch.equal(corner[:, 0, 0], torch.full((3,), -1.0))              # black (0) -> -1


def test_colour_distortion_follows_tensorflow():
    x = torch.rand(3, 8, 8)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    same = Colour(order=0, brightness=0.0, saturation=1.0, hue=0.0, contrast=1.0)
    torch.testing.assert_close(distort_colour(x, same), x, atol=1e-5, rtol=0)
    dim = x * 0.8                                  # brightness is added (and not clipped here)
    torch.testing.assert_close(distort_colour(dim, Colour(0, 0.1, 1.0, 0.0, 1.0)), dim + 0.1, atol=1e-5, rtol=0)
    # contrast is per channel, around each channel's mean
    mid = 0.3 + 0.4 * x                            # stays in [0, 1] at contrast 1.5
    mean = mid.mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(distort_colour(mid, Colour(1, 0.0, 1.0, 0.0, 1.5)), (mid - mean) * 1.5 + mean,
                               atol=1e-5, rtol=0)
    # a hue shift of 1/3 turns pure red into pure green
    red = torch.zeros(3, 2, 2)
    red[0] = 1
    green = distort_colour(red, Colour(0, 0.0, 1.0, 1 / 3, 1.0))
    torch.testing.assert_close(green, torch.stack([torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 2)]),
                               atol=1e-5, rtol=0)


def test_eval_is_the_central_80_percent_of_each_side():
    e = EvalTransform("central_crop", 16)
    assert e.box(100, 200) == (10, 20, 80, 160) and e.box(224, 224) == (22, 22, 180, 180)
    out = e(ramp(100, 200))
    assert out.shape == (3, 16, 16)
    # pixel centres, 10x down: output column 0 samples input column 20 + 4.5
    assert out[0, :, 0].mean().item() == pytest.approx(2 * (20 + 4.5) / 199 - 1, abs=0.01)
    assert EvalTransform("resize", 16).box(100, 200) == (0, 0, 100, 200)
    u8 = (ramp(100, 200) * 255).to(torch.uint8)                               # decoded images are uint8
    torch.testing.assert_close(e(u8), out, atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="expected an RGB"):
        e(torch.zeros(1, 10, 10))
    with pytest.raises(ValueError, match="train transform must be one of code, finetune, paper, flip"):
        TrainTransform("tf")
