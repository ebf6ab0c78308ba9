import pytest
import torch

from fusedembed import load_recipe
from fusedembed.recipe import split_loss
from fusedembed.testing import plugin_manager


@pytest.fixture(scope="module")
def regs():
    manager = plugin_manager(example="fusedembed_example")
    assert manager.plugins["example"].ok, manager.plugins["example"].error
    return manager.registries


def test_registers_its_components(regs):
    assert regs["backbone"].list("example/*") == ["example/convnet"]
    assert regs["loss"].list("example/*") == ["example/center"]
    assert regs["dataset"].list("example/*") == ["example/noise"]
    assert regs["recipe"].list("example/*") == ["example/tiny"]


def test_components_build_from_config(regs):
    net = regs.build("backbone", {"name": "example/convnet", "width": 4, "out_dim": 6})
    assert net.out_dim == 6 and net(torch.rand(2, 3, 16, 16)).shape == (2, 6)
    data = regs.build("dataset", {"name": "example/noise", "length": 10, "num_classes": 3}, split="val")
    item = data[0]
    assert len(data) == 10 and set(item) == {"image", "label", "index"}
    assert item["image"].shape == (3, 16, 16) and 0 <= item["label"] < 3
    again = regs.build("dataset", {"name": "example/noise", "length": 10, "num_classes": 3}, split="val")
    torch.testing.assert_close(again[3]["image"], data[3]["image"])  # deterministic


def test_center_loss_matches_a_hand_computed_case(regs):
    loss = regs.build("loss", {"name": "example/center", "num_classes": 2, "dim": 2})
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    embedding = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    # (|(3,4)-(0,0)|^2 + |(1,2)-(1,1)|^2) / 2 samples / 2 = (25 + 1) / 4
    assert loss(embedding, torch.tensor([0, 1])).item() == pytest.approx(6.5)
    assert loss.seen.tolist() == [1, 1] and "seen" in loss.state_dict()


def test_recipe_trains_a_few_steps(regs):
    with regs.active():
        recipe = load_recipe("example/tiny")
    torch.manual_seed(0)
    model = regs.build("model", recipe.model)
    losses = []
    for entry in recipe.losses:
        cfg, weight, _ = split_loss(entry)
        losses.append((regs.build("loss", cfg), weight))
    data = regs.build("dataset", recipe.data.train, split="train")
    loader = torch.utils.data.DataLoader(data, batch_size=recipe.trainer.batch_size, shuffle=True)
    params = list(model.parameters()) + [p for loss, _ in losses for p in loss.parameters()]
    opt = torch.optim.SGD(params, lr=recipe.trainer.lr, momentum=recipe.trainer.optimizer.momentum)
    epoch_means = []
    for _ in range(recipe.trainer.epochs + 1):
        total_sum = 0.0
        for batch in loader:
            out = model(batch)
            total = (losses[0][1] * losses[0][0](out["logits"], batch["label"])
                     + losses[1][1] * losses[1][0](out["embedding"], batch["label"]))
            opt.zero_grad()
            total.backward()
            opt.step()
            total_sum += total.item()
        epoch_means.append(total_sum / len(loader))
    assert epoch_means[-1] < 0.5 * epoch_means[0], epoch_means
