"""The synthetic face set: deterministic, balanced, and learnable but not trivial."""

import collections
import time

import numpy as np
import pytest

from fer_core.data.synth import EXPRESSIONS, render_face, synthesize


def test_expressions_are_the_canonical_seven():
    assert EXPRESSIONS == ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


@pytest.mark.parametrize("size", [48, 96])
def test_faces_are_uint8_rgb_of_the_requested_size(size):
    for _, image in synthesize(7, size=size):
        assert image.shape == (size, size, 3)
        assert image.dtype == np.uint8
        assert image.std() > 10  # something was drawn


def test_labels_are_balanced_and_in_order():
    labels = [label for label, _ in synthesize(70)]
    assert labels[:7] == list(EXPRESSIONS)
    assert labels == [EXPRESSIONS[i % 7] for i in range(70)]
    assert collections.Counter(labels) == {name: 10 for name in EXPRESSIONS}


def test_same_seed_same_faces_other_seed_other_faces():
    first = [image for _, image in synthesize(14, seed=3)]
    again = [image for _, image in synthesize(14, seed=3)]
    other = [image for _, image in synthesize(14, seed=4)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))


def test_a_sample_does_not_depend_on_how_many_are_asked_for():
    few = [image for _, image in synthesize(3, seed=5)]
    many = [image for _, image in synthesize(10, seed=5)]
    assert all(np.array_equal(a, b) for a, b in zip(few, many))
    alone = render_face(EXPRESSIONS[9 % 7], np.random.default_rng([5, 9]))
    assert np.array_equal(alone, many[9])


def test_faces_within_a_class_differ():
    images = [image for label, image in synthesize(70, seed=1) if label == "happiness"]
    assert len({image.tobytes() for image in images}) == len(images)


def test_unknown_expression_is_rejected():
    with pytest.raises(ValueError, match="contempt"):
        render_face("contempt", np.random.default_rng(0))


# --- learnability ----------------------------------------------------------------------------

N_TRAIN, N_TEST, EPOCHS = 2800, 700, 12


@pytest.fixture(scope="module")
def torch_two_threads():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(torch_two_threads):
    torch = torch_two_threads

    def load(n, seed):
        labels, images = zip(*synthesize(n, seed=seed))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        y = torch.tensor([EXPRESSIONS.index(label) for label in labels])
        return x, y

    return load(N_TRAIN, seed=1), load(N_TEST, seed=2)


def _small_cnn(torch):
    nn = torch.nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(
        block(3, 16), nn.MaxPool2d(2),
        block(16, 32), nn.MaxPool2d(2),
        block(32, 64), nn.MaxPool2d(2),
        block(64, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, len(EXPRESSIONS)),
    )


def _train(torch, model, x, y, epochs, lr, batch_size=64, flip=False):
    steps = epochs * -(-len(x) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(batch_size):
            inputs = x[batch]
            if flip:  # expressions are left-right symmetric up to the disgust side, drawn at random anyway
                mirrored = torch.rand(len(batch)) < 0.5
                inputs = torch.where(mirrored[:, None, None, None], inputs.flip(3), inputs)
            loss = torch.nn.functional.cross_entropy(model(inputs), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return model


def _accuracy(torch, model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_a_small_cnn_learns_the_expressions_and_raw_pixels_do_not(faces, torch_two_threads):
    torch = torch_two_threads
    (x_train, y_train), (x_test, y_test) = faces

    torch.manual_seed(0)
    start = time.perf_counter()
    cnn = _train(torch, _small_cnn(torch), x_train, y_train, epochs=EPOCHS, lr=3e-3, flip=True)
    cnn_accuracy = _accuracy(torch, cnn, x_test, y_test)
    cnn_seconds = time.perf_counter() - start

    # baselines on raw pixels: the nearest training face, and a linear classifier
    train_pixels, test_pixels = x_train.flatten(1), x_test.flatten(1)
    nearest = torch.cdist(test_pixels, train_pixels).argmin(1)
    nearest_accuracy = (y_train[nearest] == y_test).float().mean().item()
    mean, std = train_pixels.mean(0), train_pixels.std(0) + 1e-3
    linear = torch.nn.Linear(train_pixels.shape[1], len(EXPRESSIONS))
    linear = _train(torch, linear, (train_pixels - mean) / std, y_train, epochs=30, lr=1e-3, batch_size=128)
    linear_accuracy = _accuracy(torch, linear, (test_pixels - mean) / std, y_test)

    print(f"cnn {cnn_accuracy:.3f} ({cnn_seconds:.0f}s), 1-nn {nearest_accuracy:.3f}, linear {linear_accuracy:.3f}")
    chance = 1 / len(EXPRESSIONS)
    assert cnn_accuracy > 0.6, f"small CNN reached only {cnn_accuracy:.1%} (chance {chance:.0%})"
    assert nearest_accuracy < cnn_accuracy - 0.25, "1-nearest-neighbour on raw pixels does too well: task is trivial"
    assert linear_accuracy < cnn_accuracy - 0.25, "a linear model on raw pixels does too well: task is trivial"
