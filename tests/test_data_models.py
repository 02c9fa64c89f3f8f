"""Claims about the data sets and the models.

- the penguins split is stratified and disjoint, moves with data_seed but not with the training
  seed, and is standardized with training-set statistics;
- the shipped MNIST test split is md5-checked, and every data failure names the path and the fix;
- a population's logits are each seed's logits computed alone (grouped convolutions included).
"""

from __future__ import annotations

import shutil

import numpy as np
import palmerpenguins
import pytest
import torch
from torch.func import functional_call

from fgray.config import TEST_FUNCTIONS, TrainConfig
from fgray.data import PENGUIN_FEATURES, DataError, load_data, mnist, mnist_t10k, penguins, t10k_dir
from fgray.loop import PopulationTrainer
from fgray.models import build_model, init_params, init_population

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def raw_penguins() -> tuple[np.ndarray, np.ndarray]:
    """The measurements and species of every complete row, unstandardized."""
    frame = palmerpenguins.load_penguins().dropna(subset=[*PENGUIN_FEATURES, "species"])
    return frame[list(PENGUIN_FEATURES)].to_numpy(), frame["species"].to_numpy()


def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.tolist()}


# -- penguins ------------------------------------------------------------------------------------
@pytest.mark.parametrize("test_fraction", [0.2, 0.3])
def test_penguins_split_is_stratified_by_species(test_fraction):
    data = penguins(0, test_fraction)

    _, species = raw_penguins()
    per_class = np.unique(species, return_counts=True)[1]  # Adelie, Chinstrap, Gentoo
    assert torch.bincount(data.y_test).tolist() == np.round(test_fraction * per_class).tolist()
    assert (
        torch.bincount(data.y_train) + torch.bincount(data.y_test)
    ).tolist() == per_class.tolist()


def test_penguins_train_and_test_rows_are_disjoint_and_cover_the_data():
    data = penguins(0, 0.2)

    measurements, _ = raw_penguins()
    assert rows(data.x_train).isdisjoint(rows(data.x_test))
    assert len(rows(data.x_train) | rows(data.x_test)) == len(measurements) == 342


def test_data_seed_changes_the_penguins_split_and_the_training_seed_does_not():
    config = TrainConfig(model="logreg")

    a, b = PopulationTrainer(config, [0]), PopulationTrainer(config, [5])
    other_split = PopulationTrainer(config.replace(data_seed=1), [0])

    assert torch.equal(a.objective.data.x_train, b.objective.data.x_train)
    assert torch.equal(a.objective.data.y_test, b.objective.data.y_test)
    assert not torch.equal(a.params["W"], b.params["W"])  # the training seed does differ
    assert not torch.equal(a.objective.data.x_test, other_split.objective.data.x_test)
    assert torch.equal(a.params["W"], other_split.params["W"])  # the data seed is not the init


def test_penguins_are_standardized_with_training_set_statistics():
    data = penguins(0, 0.2)

    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.x_train.std(0, unbiased=False), torch.ones(4))
    # The test rows went through the same affine map (so the map is the training one) ...
    measurements, _ = raw_penguins()
    for j in range(4):
        standardized = np.sort(np.concatenate([data.x_train[:, j], data.x_test[:, j]]))
        raw = np.sort(measurements[:, j])
        slope, intercept = np.polyfit(raw, standardized, 1)
        assert np.abs(slope * raw + intercept - standardized).max() < 1e-4
    # ... and were not standardized on their own statistics.
    assert (data.x_test.mean(0).abs() > 1e-3).any()


# -- MNIST ---------------------------------------------------------------------------------------
def test_shipped_mnist_test_split_loads_as_disjoint_normalized_pools(tmp_path):
    data = mnist_t10k(0, 32, 8)

    assert data.x_train.shape == (32, 1, 28, 28) and data.x_test.shape == (8, 1, 28, 28)
    assert data.num_classes == 10
    assert rows(data.x_train.reshape(32, -1)).isdisjoint(rows(data.x_test.reshape(8, -1)))
    assert not torch.equal(data.x_train, mnist_t10k(1, 32, 8).x_train)
    for name in (IMAGES, LABELS):
        shutil.copy(t10k_dir() / name, tmp_path / name)
    copy = mnist_t10k(0, 32, 8, directory=str(tmp_path))
    assert torch.equal(copy.x_train, data.x_train) and torch.equal(copy.y_test, data.y_test)


@pytest.mark.parametrize("name", [IMAGES, LABELS])
def test_a_corrupt_mnist_file_fails_its_md5_check_naming_the_path(name, tmp_path):
    for file in (IMAGES, LABELS):
        shutil.copy(t10k_dir() / file, tmp_path / file)
    corrupt = tmp_path / name
    raw = bytearray(corrupt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(raw))

    with pytest.raises(DataError, match="corrupt") as error:
        mnist_t10k(directory=str(tmp_path))

    assert str(corrupt) in str(error.value)
    assert "reinstall" in str(error.value)


def test_a_missing_mnist_file_is_named(tmp_path):
    shutil.copy(t10k_dir() / LABELS, tmp_path / LABELS)

    with pytest.raises(DataError, match="missing") as error:
        mnist_t10k(directory=str(tmp_path))

    assert str(tmp_path / IMAGES) in str(error.value)


def test_full_mnist_absent_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        mnist(str(tmp_path), False)

    message = str(error.value)
    assert str(tmp_path) in message
    assert "--download" in message and "mnist-t10k" in message
    with pytest.raises(DataError, match="--download"):
        load_data(TrainConfig(model="cnn", data="mnist", data_root=str(tmp_path)))


def test_asking_for_more_mnist_images_than_exist_says_to_lower_the_sizes():
    with pytest.raises(DataError, match="lower them"):
        mnist_t10k(0, 9_000, 2_000)


# -- models --------------------------------------------------------------------------------------
def inputs_for(name: str) -> tuple[torch.Tensor, ...]:
    if name == "cnn":
        return (mnist_t10k(0, 16, 8).x_train,)
    if name in ("logreg", "mlp"):
        return (penguins().x_train[:16],)
    return ()


@pytest.mark.parametrize(
    ("name", "single_shape"),
    [
        ("logreg", (16, 3)),
        ("mlp", (16, 3)),
        ("cnn", (16, 10)),
        ("sphere", ()),
        ("rosenbrock", ()),
        ("beale", ()),
    ],
)
def test_a_population_computes_each_seed_as_if_alone(name, single_shape):
    model = build_model(name)
    seeds = [0, 1, 2, 3]
    population = init_population(model, seeds)
    spread = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    if name in TEST_FUNCTIONS:  # one fixed start: spread the seeds apart
        population = {"xy": population["xy"] + spread}

    together = functional_call(model, population, inputs_for(name))

    assert together.shape == (len(seeds), *single_shape)
    for i, seed in enumerate(seeds):
        alone = {k: p[i] for k, p in population.items()}
        logits = functional_call(model, alone, inputs_for(name))
        assert logits.shape == single_shape
        torch.testing.assert_close(together[i], logits)
        own = init_params(model, torch.Generator().manual_seed(seed))  # as if initialised alone
        own = {k: v + spread[i] for k, v in own.items()} if name in TEST_FUNCTIONS else own
        assert own.keys() == alone.keys()
        assert all(torch.equal(own[k], alone[k]) for k in own)


def test_the_cnn_population_also_takes_per_seed_image_batches():
    model = build_model("cnn")
    population = init_population(model, [0, 1, 2])
    images = mnist_t10k(0, 16, 8).x_train

    per_seed = functional_call(model, population, (images[:12].reshape(3, 4, 1, 28, 28),))

    for i in range(3):
        alone = {k: p[i] for k, p in population.items()}
        torch.testing.assert_close(
            per_seed[i], functional_call(model, alone, (images[4 * i : 4 * i + 4],))
        )
