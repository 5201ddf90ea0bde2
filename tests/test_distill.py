"""Distillation: planted colour/pattern classes, tiny nets, CPU, seeded."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from omnifer.catalog.schemas import DISTILLED
from omnifer.distill import (
    DistillConfig,
    DistilledSet,
    ParquetClassSampler,
    TensorClassSampler,
    distill,
    save_grids,
)
from omnifer.distill.augmentation import DSA
from omnifer.distill.config import CPU_DEFAULTS, GPU_DEFAULTS
from omnifer.distill.evaluation import evaluate_small_set, herding, random_subset
from omnifer.distill.methods import dm_embedding_gap, gm_matching_loss
from omnifer.distill.networks import ConvNet, reset_parameters
from omnifer.distill.registry import METHODS
from omnifer.errors import ConfigError, DatasetError
from omnifer.imaging.tensors import denormalize, normalize

CLASSES = ["red_h", "green_v", "blue_c"]
SIZE = 16
TINY = {"image_size": SIZE, "net_width": 32, "net_depth": 2, "device": "cpu"}


def planted_uint8(n_per_class: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 images: class 0 red + horizontal stripes, 1 green + vertical, 2 blue + checks;
    heavy noise and random brightness so single samples are far from the class mean."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = [(yy // 2) % 2, (xx // 2) % 2, ((yy // 2) + (xx // 2)) % 2]
    channel = [2, 1, 0]  # BGR index of red, green, blue
    images, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            img = rng.uniform(40, 120, size=(size, size, 3))
            img[:, :, channel[c]] += 60 + 60 * patterns[c]
            img *= rng.uniform(0.6, 1.2)
            img += rng.normal(0, 35, size=img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def to_tensor(images_bgr: np.ndarray) -> torch.Tensor:
    rgb = images_bgr[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return normalize(torch.from_numpy(np.ascontiguousarray(rgb)))


@pytest.fixture(scope="module")
def planted() -> dict[str, torch.Tensor]:
    x, y = planted_uint8(40, seed=1)
    tx, ty = planted_uint8(30, seed=2)
    return {"x": to_tensor(x), "y": torch.from_numpy(y), "tx": to_tensor(tx),
            "ty": torch.from_numpy(ty)}


def by_class(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return [x[y == c] for c in range(3)]


def test_methods_registered_and_unknown_rejected() -> None:
    assert {"dm", "gm"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method"):
        DistillConfig(method="nope")
    assert DistillConfig(method="dm").lr_img == 1.0
    assert DistillConfig(method="gm").lr_img == 0.1


def test_unset_sizes_follow_the_device() -> None:
    sizes = ("iterations", "net_width", "batch_real")
    cpu, gpu = DistillConfig(device="cpu"), DistillConfig(device="cuda:0")  # no CUDA needed
    assert {k: getattr(cpu, k) for k in sizes} == CPU_DEFAULTS
    assert {k: getattr(gpu, k) for k in sizes} == GPU_DEFAULTS
    assert CPU_DEFAULTS["net_width"] < GPU_DEFAULTS["net_width"]
    assert DistillConfig(device="cpu", net_width=128).net_width == 128  # explicit wins
    stored = DistillConfig.model_validate_json(gpu.model_dump_json())  # read back on a CPU
    assert stored.net_width == GPU_DEFAULTS["net_width"]


def test_distilled_version_names_parameters_and_algorithm_revision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Same curated versions and parameters: same name (a rerun skips); another device or
    thread count: same name; other parameters or another algorithm revision: another name."""
    from omnifer.distill import stage

    cfg = DistillConfig(method="dm", ipc=2, device="cpu")
    name = stage.distilled_version_for(["2026-11-30.a"], cfg)
    assert name == stage.distilled_version_for(["2026-11-30.a"],
                                               cfg.model_copy(update={"threads": 1}))
    assert name != stage.distilled_version_for(["2026-11-30.a"],
                                               cfg.model_copy(update={"ipc": 3}))
    monkeypatch.setattr(stage, "ALGORITHM_REVISION", stage.ALGORITHM_REVISION + 1)
    assert name != stage.distilled_version_for(["2026-11-30.a"], cfg)


def test_dm_moves_toward_class_mean_and_trains_above_chance(planted) -> None:
    sampler = TensorClassSampler(planted["x"], planted["y"])
    cfg = DistillConfig(method="dm", ipc=2, iterations=20, batch_real=32, seed=0, **TINY)
    init = distill(sampler, CLASSES, cfg.model_copy(update={"iterations": 0}), progress=False)
    out = distill(sampler, CLASSES, cfg, progress=False)
    assert out.images.shape == (6, 3, SIZE, SIZE)
    assert out.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert not torch.equal(out.images, init.images)
    real = by_class(planted["x"], planted["y"])
    gap0 = dm_embedding_gap(init.images, real, ipc=2, num_nets=6, seed=7, width=32, depth=2)
    gap1 = dm_embedding_gap(out.images, real, ipc=2, num_nets=6, seed=7, width=32, depth=2)
    assert gap1 < 0.7 * gap0, (gap0, gap1)
    res = evaluate_small_set(out.images, out.labels, planted["tx"], planted["ty"],
                             num_models=2, epochs=40, seed=0, width=32, depth=2, device="cpu")
    assert len(res["accs"]) == 2
    assert res["mean"] > 0.6, res  # chance is 1/3


def test_gradient_matching_reduces_matching_loss(planted) -> None:
    sampler = TensorClassSampler(planted["x"], planted["y"])
    cfg = DistillConfig(method="gm", ipc=2, iterations=25, batch_real=16, seed=0, init="noise",
                        gm_outer_loop=2, gm_inner_loop=1, **TINY)
    init = distill(sampler, CLASSES, cfg.model_copy(update={"iterations": 0}), progress=False)
    out = distill(sampler, CLASSES, cfg, progress=False)
    assert len(out.losses) == 25
    real = by_class(planted["x"], planted["y"])
    loss0 = gm_matching_loss(init.images, real, ipc=2, num_nets=4, seed=3, width=32, depth=2)
    loss1 = gm_matching_loss(out.images, real, ipc=2, num_nets=4, seed=3, width=32, depth=2)
    assert loss1 < 0.9 * loss0, (loss0, loss1)


@pytest.mark.parametrize("method", ["dm", "gm"])
def test_same_seed_gives_identical_tensors(planted, method: str) -> None:
    sampler = TensorClassSampler(planted["x"], planted["y"])
    cfg = DistillConfig(method=method, ipc=2, iterations=2, batch_real=8, seed=5,
                        gm_outer_loop=2, gm_inner_loop=1, **TINY)
    a = distill(sampler, CLASSES, cfg, progress=False).images
    b = distill(sampler, CLASSES, cfg, progress=False).images
    c = distill(sampler, CLASSES, cfg.model_copy(update={"seed": 6}), progress=False).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dsa_siamese_and_differentiable() -> None:
    dsa = DSA(mode="all")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    params = dsa.sample(1, gen, siamese=True)
    assert set(params) == {"color", "crop", "cutout", "flip", "scale", "rotate"}
    a = dsa.apply(x, params)
    b = dsa.apply(x[:2].detach(), params)  # another batch size, same parameters
    assert torch.allclose(a[:2], b, atol=1e-6)
    assert not torch.allclose(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Per-class draws on consecutive groups in one call == each group's slice on its own.
    for mode in ("all", "single"):
        grouped = DSA(mode=mode)
        draws = [grouped.sample(1, gen, siamese=True) for _ in range(5)]
        sizes = [3, 1, 4, 2, 3]
        xs = torch.randn(sum(sizes), 3, 16, 16)
        whole = grouped.apply_groups(xs, sizes, draws)
        parts = torch.cat([grouped.apply(part, d)
                           for part, d in zip(xs.split(sizes), draws, strict=True)])
        assert torch.allclose(whole, parts, atol=1e-5), mode
    per_sample = DSA("flip_rotate", mode="all")(torch.ones(8, 3, 8, 8).cumsum(3), gen)
    assert any(not torch.allclose(per_sample[0], per_sample[i]) for i in range(1, 8))
    with pytest.raises(ValueError):
        DSA("color_warp")


def test_channels_last_net_is_the_same_function() -> None:
    gen = torch.Generator().manual_seed(0)
    a = reset_parameters(ConvNet(3, width=8, depth=2, image_size=SIZE), gen)
    b = copy.deepcopy(a).channels_last()
    x = torch.randn(5, 3, SIZE, SIZE, generator=gen)
    assert b.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a.embed(x), b.embed(x), atol=1e-5)
    assert torch.allclose(a(x), b(x), atol=1e-5)


def _encode(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_parquet_sampler_per_class_multi_row_group(tmp_path: Path) -> None:
    # Solid colours: class c has channel c (RGB) high; an unknown label must never appear.
    rng = np.random.default_rng(0)
    names = CLASSES + ["other"]
    labels = rng.integers(0, 4, size=90)
    crops = []
    for i, lab in enumerate(labels):
        img = np.full((112, 112, 3), 30, np.uint8)
        if lab < 3:
            img[:, :, 2 - lab] = 220  # BGR: class 0 → red, 1 → green, 2 → blue
        img[:40, :40] = img[:40, :40] // 2 + i % 40  # each row its own image
        crops.append(_encode(img))
    table = pa.table({"face_id": [f"f{i}" for i in range(90)],
                      "label": [names[i] for i in labels], "crop": crops})
    path = tmp_path / "curated.parquet"
    pq.write_table(table, path, row_group_size=20)
    assert pq.ParquetFile(path).num_row_groups == 5
    sampler = ParquetClassSampler(path, CLASSES, image_size=SIZE, cache_row_groups=2,
                                  max_decoded_bytes=0)  # streams
    gen = torch.Generator().manual_seed(0)
    for c in range(3):
        assert sampler.count(c) == int((labels == c).sum())
        x = sampler.sample(c, sampler.count(c) + 3, gen)  # with replacement past the count
        assert x.shape == (sampler.count(c) + 3, 3, SIZE, SIZE)
        dominant = denormalize(x).mean(dim=(2, 3)).argmax(1)
        assert (dominant == c).all()
    auto = ParquetClassSampler(str(tmp_path), None, image_size=SIZE)
    assert auto.classes == sorted(names)
    # Small sets are decoded once into memory, larger ones stream: the same draws either way.
    assert not sampler.in_memory and auto.in_memory
    memory = ParquetClassSampler(path, CLASSES, image_size=SIZE)
    assert memory.in_memory
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for c in (2, 0, 1, 2):
        assert torch.equal(memory.sample(c, 7, g1), sampler.sample(c, 7, g2))


def test_arrow_round_trip_and_grids(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    cfg = DistillConfig(ipc=2, iterations=0, **TINY)
    images = torch.randn(6, 3, SIZE, SIZE, generator=gen)
    dset = DistilledSet(images, torch.tensor([0, 0, 1, 1, 2, 2]), CLASSES, cfg, 1.0)
    table = dset.to_arrow("cur@1", "dist@1")
    assert table.schema.equals(DISTILLED)
    assert table.column("class").to_pylist() == ["red_h"] * 2 + ["green_v"] * 2 + ["blue_c"] * 2
    assert table.column("index").to_pylist() == [0, 1] * 3
    assert set(table.column("curated_version").to_pylist()) == {"cur@1"}
    back = DistilledSet.from_arrow(table.take([5, 0, 3, 1, 4, 2]))
    assert sorted(back.classes) == sorted(CLASSES)
    for c, name in enumerate(CLASSES):
        got = back.images[back.labels == back.classes.index(name)]
        assert torch.equal(got, images[dset.labels == c])
    assert back.config == cfg
    half = DistilledSet.from_arrow(dset.to_arrow(dtype="float16"))
    assert half.images.dtype == torch.float32
    paths = save_grids(dset, tmp_path / "grids")
    assert sorted(p.name for p in paths) == sorted(f"{n}.png" for n in CLASSES)
    assert cv2.imread(str(paths[0])) is not None


def test_baselines_pick_real_images_per_class(planted) -> None:
    x, labels = random_subset((planted["x"], planted["y"]), ipc=3, seed=0)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    hx, hl = herding((planted["x"], planted["y"]), ipc=3, seed=0, device="cpu")
    assert hl.tolist() == labels.tolist()
    for img, lab in zip(hx, hl, strict=True):
        match = (planted["x"] == img).flatten(1).all(1)
        assert match.any() and planted["y"][match][0] == lab


def _image_folder(root: Path, n: int = 6) -> None:
    images, labels = planted_uint8(n, seed=3, size=40)
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[lab]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}"), img)


def test_cli_run_and_evaluate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from typer.testing import CliRunner

    import omnifer.cli.distill  # noqa: F401  (registers the sub-app)
    from omnifer.cli._app import app

    _image_folder(tmp_path / "data")
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["distill", "run", "--data", str(tmp_path / "data"), "--format",
                              "folder", "--out", str(out), "--method", "dm", "--ipc", "2",
                              "--iterations", "3", "--image-size", "16", "--batch-real", "4",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    table = pq.read_table(out / "distilled.parquet")
    assert table.num_rows == 6
    assert set(table.column("class").to_pylist()) == set(CLASSES)
    assert sorted(p.name for p in (out / "grids").iterdir()) == sorted(f"{c}.png" for c in CLASSES)
    assert (out / "config.json").exists()
    caplog.set_level("INFO", logger="omnifer.progress")
    res = runner.invoke(app, ["distill", "evaluate", "--distilled", str(out / "distilled.parquet"),
                              "--test", str(tmp_path / "data"), "--data", str(tmp_path / "data"),
                              "--num-models", "1", "--epochs", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("distilled (dm)", "random", "herding"):
        assert name in res.output
    # progress counts every training epoch: 3 sets x 1 model x 2 epochs
    assert any("evaluate 3 sets x 1 ConvNets: done, 6 epoch" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    res = runner.invoke(app, ["distill", "run", "--data", str(tmp_path / "data"), "--out",
                              str(out), "--method", "nope"])
    assert isinstance(res.exception, ConfigError)
    res = runner.invoke(app, ["distill", "run", "--data", str(tmp_path / "missing"), "--out",
                              str(out)])
    assert isinstance(res.exception, DatasetError)
