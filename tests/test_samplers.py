"""Sampler invariants for both TaskSources: sizes, labels, distinctness, seeding, resume, uniformity."""
from __future__ import annotations

import random

import pytest
import torch
from scipy.stats import chisquare

from l2l_app.errors import ConfigError
from l2l_app.data import EpisodeBatch, build_task_source
from l2l_app.data.samplers import L2LTaskSource, TensorTaskSource

KINDS = ("l2l", "tensor")


def _check_batch(split, batch: EpisodeBatch, s_idx, q_idx, ways, shots, queries, num_tasks):
    c, h, w = split.images.shape[1:]
    assert batch.support_x.shape == (num_tasks, ways * shots, c, h, w)
    assert batch.query_x.shape == (num_tasks, ways * queries, c, h, w)
    assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
    assert (batch.ways, batch.shots, batch.queries) == (ways, shots, queries)
    expected_s = torch.arange(ways).repeat_interleave(shots)
    expected_q = torch.arange(ways).repeat_interleave(queries)
    for t in range(num_tasks):
        assert torch.equal(batch.support_y[t], expected_s)
        assert torch.equal(batch.query_y[t], expected_q)
        idx = torch.cat([s_idx[t], q_idx[t]])
        assert idx.unique().numel() == ways * (shots + queries), "an image repeats within a task"
        # Images are exactly the source images / 255 (bit-identical on every device).
        assert torch.equal(batch.support_x[t].cpu(), split.images[s_idx[t]].float() / 255)
        assert torch.equal(batch.query_x[t].cpu(), split.images[q_idx[t]].float() / 255)
        # Each label maps to one source class, the same in support and query; classes distinct.
        s_cls = split.labels[s_idx[t]].reshape(ways, shots)
        q_cls = split.labels[q_idx[t]].reshape(ways, queries)
        assert (s_cls == s_cls[:, :1]).all() and (q_cls == s_cls[:, :1]).all()
        assert s_cls[:, 0].unique().numel() == ways, "a class repeats within a task"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 3), (3, 4, 6), (12, 2, 1)])
def test_episode_invariants(kind, tiny_split, ways, shots, queries):
    src = build_task_source(kind, tiny_split, ways, shots, queries, seed=1)
    batch, s_idx, q_idx = src.sample_with_indices(6)
    _check_batch(tiny_split, batch, s_idx, q_idx, ways, shots, queries, 6)
    assert src.sample(2).num_tasks == 2


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_episodes_and_different_seed_differs(kind, tiny_split):
    a = build_task_source(kind, tiny_split, 5, 2, 3, seed=7)
    b = build_task_source(kind, tiny_split, 5, 2, 3, seed=7)
    c = build_task_source(kind, tiny_split, 5, 2, 3, seed=8)
    for _ in range(3):
        x, y, z = a.sample(4), b.sample(4), c.sample(4)
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.query_x, y.query_x)
    assert not torch.equal(x.support_x, z.support_x)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_resumes_exactly(kind, tiny_split):
    src = build_task_source(kind, tiny_split, 4, 1, 2, seed=3)
    src.sample(5)
    state = src.state_dict()
    expected = [src.sample(3) for _ in range(3)]
    # A fresh source (another seed) loaded with the state continues identically; also after torch.save.
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = build_task_source(kind, tiny_split, 4, 1, 2, seed=999)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    for e in expected:
        got = restored.sample(3)
        assert torch.equal(got.support_x, e.support_x) and torch.equal(got.query_x, e.query_x)


@pytest.mark.parametrize("kind", KINDS)
def test_global_rng_state_untouched_and_ignored(kind, tiny_split):
    random.seed(123)
    torch.manual_seed(123)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    src = build_task_source(kind, tiny_split, 5, 2, 2, seed=0)
    first = src.sample(3)
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    # Disturbing the global generators does not change this source's episodes.
    ref = build_task_source(kind, tiny_split, 5, 2, 2, seed=0)
    random.seed(5)
    torch.manual_seed(5)
    random.random()
    torch.rand(3)
    assert torch.equal(ref.sample(3).support_x, first.support_x)


@pytest.mark.parametrize("kind", KINDS)
def test_uniform_class_and_image_frequencies(kind, tiny_split):
    ways, shots, queries, tasks = 4, 1, 2, 1200
    src = build_task_source(kind, tiny_split, ways, shots, queries, seed=2024)
    _, s_idx, q_idx = src.sample_with_indices(tasks)
    idx = torch.cat([s_idx, q_idx], dim=1).flatten()
    images = torch.bincount(idx, minlength=len(tiny_split.labels)).double()
    classes = torch.bincount(tiny_split.labels[s_idx].flatten(), minlength=tiny_split.num_classes).double()
    assert chisquare(classes.numpy()).pvalue > 1e-3
    assert chisquare(images.numpy()).pvalue > 1e-3
    # Support/query roles are symmetric too: every image is a support image equally often.
    support = torch.bincount(s_idx.flatten(), minlength=len(tiny_split.labels)).double()
    assert chisquare(support.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_unequal_class_sizes(kind, tiny_split_factory):
    counts = [5, 9, 3, 12, 4, 7]
    split = tiny_split_factory(counts=counts, seed=3)
    assert split.images_per_class == 3
    src = build_task_source(kind, split, 3, 1, 2, seed=0)
    batch, s_idx, q_idx = src.sample_with_indices(600)
    _check_batch(split, batch, s_idx, q_idx, 3, 1, 2, 600)
    idx = torch.cat([s_idx, q_idx], dim=1).flatten()
    freq = torch.bincount(idx, minlength=len(split.labels)).double()
    assert (freq > 0).all()
    # Within each class, images are used uniformly.
    for c in range(len(counts)):
        assert chisquare(freq[split.labels == c].numpy()).pvalue > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_episode_shapes(kind, tiny_split):
    tiny_split.dataset, tiny_split.split = "omniglot", "test"
    cases = [
        (dict(ways=1), r"--ways 1 is too small: a few-shot task needs at least 2 classes"),
        (dict(ways=2000), r"--ways 2000 exceeds the 12 classes of the omniglot test split; use at most 12$"),
        (dict(shots=0), r"--shots 0 is too small"),
        (dict(queries=0), r"--queries 0 is too small"),
        (dict(shots=6, queries=5), r"class class000 of the omniglot test split has only 10 images \(as do 11 "
                                   r"other classes\) but --shots 6 \+ --queries 5 = 11 are needed"),
    ]
    for override, message in cases:
        args = dict(ways=5, shots=1, queries=1) | override
        with pytest.raises(ConfigError, match=message) as e:
            build_task_source(kind, tiny_split, seed=0, **args)
        assert "\n" not in str(e.value)
    # a dataset whose classes --split-ratios may split says how to give the split more of them
    tiny_split.dataset, tiny_split.split = "folder", "val"
    with pytest.raises(ConfigError, match=r"--ways 13 exceeds the 12 classes of the folder val split; use at most "
                                          r"12, or, where the classes are split by --split-ratios .* give the val "
                                          r"split a larger share$"):
        build_task_source(kind, tiny_split, 13, 1, 1, seed=0)
    cls = L2LTaskSource if kind == "l2l" else TensorTaskSource
    with pytest.raises(ConfigError, match=r"--train-ways 13 exceeds the 12 classes"):
        cls(tiny_split, 13, 1, 1, 0, flags=("--train-ways", "--shots", "--queries"))


def test_too_few_images_names_the_smallest_class(tiny_split_factory):
    split = tiny_split_factory(num_classes=4, counts=[10, 10, 3, 10])
    split.dataset, split.split = "omniglot", "train"
    with pytest.raises(ConfigError, match=r"^class class002 of the omniglot train split has only 3 images but "
                                          r"--shots 1 \+ --queries 5 = 6 are needed; lower --shots or --queries"):
        build_task_source("tensor", split, 2, 1, 5, seed=0)


def test_unknown_kind(tiny_split):
    with pytest.raises(ConfigError, match=r"unknown task source 'tensr' \(did you mean 'tensor'\?\)"):
        build_task_source("tensr", tiny_split, 5, 1, 1, seed=0)


def test_rgb_split(tiny_split_factory):
    split = tiny_split_factory(num_classes=6, per_class=8, channels=3, size=12)
    for kind in KINDS:
        batch = build_task_source(kind, split, 3, 2, 2, seed=0).sample(2)
        assert batch.support_x.shape == (2, 6, 3, 12, 12)
        assert 0.0 <= float(batch.query_x.min()) and float(batch.query_x.max()) <= 1.0


def test_tensor_source_on_cuda(tiny_split):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    src = TensorTaskSource(tiny_split, 5, 1, 2, seed=0, device="cuda")
    batch, s_idx, q_idx = src.sample_with_indices(4)
    assert batch.support_x.is_cuda and batch.support_y.is_cuda
    state = src.state_dict()
    a = src.sample(3)
    src.load_state_dict(state)
    assert torch.equal(a.support_x, src.sample(3).support_x)
    _check_batch(tiny_split, batch.to("cpu"), s_idx.cpu(), q_idx.cpu(), 5, 1, 2, 4)
