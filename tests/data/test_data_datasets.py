import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

from elalora_vit.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArraySource,
    DataError,
    LazyDataset,
    Preprocess,
    TensorCacheDataset,
    get_task,
)
from elalora_vit.data.folder import folder_source
from elalora_vit.data.transforms import normalized, resized_pixels

TASK = get_task("eurosat")  # the task conftest.build_task_folder writes


@pytest.fixture
def count_opens(monkeypatch):
    """Counts PIL.Image.open calls (each one is an image decode)."""
    calls = []
    original = PIL.Image.open

    def counting_open(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    return calls


def test_default_normalisation_is_imagenet():
    assert Preprocess().image_size == 224
    assert Preprocess().mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert Preprocess().std == IMAGENET_STD == (0.229, 0.224, 0.225)


def test_preprocess_resizes_bicubic_to_a_square_and_normalises():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)  # H=10, W=12: aspect ratio not kept
    preprocess = Preprocess(image_size=16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = preprocess(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected_pixels = np.asarray(PIL.Image.fromarray(image).resize((16, 16), PIL.Image.Resampling.BICUBIC))
    expected = (expected_pixels.astype(np.float32) / 255 - [0.5, 0.25, 0.0]) / [0.5, 0.25, 1.0]
    assert torch.allclose(out, torch.from_numpy(expected.transpose(2, 0, 1)).float(), atol=1e-6)


@pytest.mark.parametrize("interpolation, pil_filter", [
    ("bilinear", PIL.Image.Resampling.BILINEAR), ("nearest", PIL.Image.Resampling.NEAREST),
])
def test_preprocess_and_the_cache_resize_with_the_interpolation_given(interpolation, pil_filter):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    preprocess = Preprocess(image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation=interpolation)
    expected = np.asarray(PIL.Image.fromarray(images[0]).resize((16, 16), pil_filter)).transpose(2, 0, 1)
    bicubic = np.asarray(PIL.Image.fromarray(images[0]).resize((16, 16), PIL.Image.Resampling.BICUBIC))
    assert not np.array_equal(expected, bicubic.transpose(2, 0, 1))  # the filters differ on this image
    assert torch.equal(preprocess.resized(images[0]), torch.from_numpy(expected.copy()))
    cached = TensorCacheDataset(ArraySource(images, np.array([0, 1])), preprocess, progress=False)
    assert torch.allclose(cached[0][0], torch.from_numpy(expected / 255).float(), atol=1e-6)


def test_solid_colour_normalises_to_known_values():
    image = np.zeros((5, 5, 3), dtype=np.uint8)
    image[..., 0] = 255
    out = Preprocess(image_size=4)(image)
    assert torch.allclose(out[0], torch.full((4, 4), (1 - 0.485) / 0.229))
    assert torch.allclose(out[2], torch.full((4, 4), -0.406 / 0.225))


def test_resized_pixels_accepts_pil_in_any_mode():
    gray = PIL.Image.fromarray(np.full((6, 7), 50, dtype=np.uint8), mode="L")
    pixels = resized_pixels(gray, 6)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 6, 6)
    assert int(pixels.min()) == int(pixels.max()) == 50


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"mean": (0.5, 0.5)}, "mean needs one value per RGB channel"),
        ({"std": (0.2, 0.0, 0.2)}, "std values must be positive"),
        ({"interpolation": "cubic"}, "unknown interpolation 'cubic'; choose one of nearest, bilinear, bicubic"),
    ],
)
def test_preprocess_rejects_bad_settings(kwargs, message):
    with pytest.raises(DataError, match=message):
        Preprocess(**kwargs)


def test_cache_decodes_each_image_once(folder_root, count_opens):
    source = folder_source(folder_root, TASK, "train800val200")
    dataset = TensorCacheDataset(source, Preprocess(image_size=8), progress=False)
    assert len(count_opens) == len(source) == 9
    for _ in range(2):  # two epochs
        items = [dataset[i] for i in range(len(dataset))]
    assert len(count_opens) == 9
    assert dataset.pixels.dtype == torch.uint8 and dataset.pixels.shape == (9, 3, 8, 8)
    assert [label for _, label in items] == [0, 1, 2, 0, 1, 2, 0, 1, 2]


def test_lazy_dataset_decodes_on_every_access(folder_root, count_opens):
    dataset = LazyDataset(folder_source(folder_root, TASK, "test"), Preprocess(image_size=8))
    assert len(count_opens) == 0
    dataset[0], dataset[0], dataset[3]
    assert len(count_opens) == 3


def _torchvision_reference(image_size: int, mean, std):
    """The VTAB preprocessing written with torchvision: an implementation independent of ours."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


@pytest.mark.parametrize("image_size", [8, 12])  # 12 x 10 images: resized, and only squeezed
def test_cached_and_lazy_items_equal_torchvision_preprocessing(image_size):
    pytest.importorskip("torchvision")
    images = np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)  # textured, not square
    source = ArraySource(images, [0, 1, 2, 0, 1, 2])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    preprocess = Preprocess(image_size=image_size, mean=mean, std=std)
    reference = _torchvision_reference(image_size, mean, std)
    cached = TensorCacheDataset(source, preprocess, progress=False)
    lazy = LazyDataset(source, preprocess)
    for index in range(len(source)):
        expected = reference(PIL.Image.fromarray(images[index]))
        for dataset in (cached, lazy):
            image, label = dataset[index]
            assert label == [0, 1, 2, 0, 1, 2][index]
            assert image.dtype == torch.float32 and image.shape == (3, image_size, image_size)
            torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)


def test_cached_and_lazy_folder_items_equal_torchvision_on_the_decoded_files(folder_root):
    pytest.importorskip("torchvision")
    source = folder_source(folder_root, TASK, "train800")
    reference = _torchvision_reference(8, IMAGENET_MEAN, IMAGENET_STD)
    lines = (folder_root / TASK.name / "train800.txt").read_text().split()
    files, labels = lines[0::2], [int(v) for v in lines[1::2]]
    cached = TensorCacheDataset(source, Preprocess(image_size=8), progress=False)
    lazy = LazyDataset(source, Preprocess(image_size=8))
    assert len(cached) == len(lazy) == len(files)
    for index, (file, label) in enumerate(zip(files, labels)):
        expected = reference(PIL.Image.open(folder_root / TASK.name / file).convert("RGB"))
        for dataset in (cached, lazy):
            torch.testing.assert_close(dataset[index][0], expected, rtol=0, atol=1e-6)
            assert dataset[index][1] == label


def test_cache_shows_a_progress_bar(capsys):
    source = ArraySource(np.zeros((3, 4, 4, 3), dtype=np.uint8), [0, 1, 2])
    TensorCacheDataset(source, Preprocess(image_size=4), progress=True, description="caching toy")
    assert "caching toy" in capsys.readouterr().err


def test_lazy_folder_dataset_pickles_and_works_in_worker_processes(folder_root):
    dataset = LazyDataset(folder_source(folder_root, TASK, "test"), Preprocess(image_size=8))
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[2][0], dataset[2][0])
    serial = next(iter(DataLoader(dataset, batch_size=4)))
    parallel = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1])
    assert serial[0].shape == (4, 3, 8, 8)


def test_array_source_checks_lengths():
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ArraySource(np.zeros((2, 4, 4, 3), dtype=np.uint8), [0, 1, 2])


def test_normalized_works_on_batches():
    pixels = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalized(pixels, torch.zeros(3, 1, 1), torch.full((3, 1, 1), 0.5))
    assert out.shape == (2, 3, 2, 2) and torch.allclose(out, torch.full_like(out, 2.0))
