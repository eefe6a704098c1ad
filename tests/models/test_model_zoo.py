"""Model zoo: shapes, structure, parameter counts, dense and sparsified training steps."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsetrain
from sparsetrain.errors import ConfigError
from sparsetrain.models import MODELS, build_model, model_options
from sparsetrain.models.resnet_cifar import PadShortcut

IMAGENET_STYLE = {"resnet18", "resnet50", "vgg16", "vgg19"}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name):
    side = 64 if name in IMAGENET_STYLE else 32
    model = build_model(name, num_classes=7, input_shape=(3, side, side), width=0.25).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_mlp_flattens_and_scales_hidden_sizes():
    model = build_model("mlp", num_classes=10, input_shape=(40,), hidden=(100, 30), width=0.5)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(40, 50), (50, 15), (15, 10)]
    assert build_model("mlp", num_classes=3, input_shape=(2, 4, 4))(torch.randn(5, 2, 4, 4)).shape == (5, 3)
    assert isinstance(build_model("mlp", num_classes=3, input_shape=(4,), activation="gelu")[2], nn.GELU)


def test_option_a_shortcut_has_no_parameters_and_pads_with_zeros():
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2 and all(_count(m) == 0 for m in shortcuts)
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize("name, params", [("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018)])
def test_cifar_resnet_parameter_counts_match_the_paper(name, params):
    # He et al. 2016 Table 6: 0.27M / 0.46M / 0.85M parameters for CIFAR-10
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32))
    assert _count(model) == params
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == int(name[6:])  # 6n+1 convs + the classifier


def test_imagenet_resnets_match_the_reference_architectures():
    # torchvision's resnet18 / resnet50 (1000 classes) have exactly these parameter counts
    r18 = build_model("resnet18", num_classes=1000, input_shape=(3, 224, 224))
    r50 = build_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))
    assert _count(r18) == 11_689_512 and _count(r50) == 25_557_032
    projections = [m for m in r18.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 3


def test_vgg_configs_and_classifier_choice():
    small = build_model("vgg16_small", num_classes=100, input_shape=(3, 32, 32))
    convs = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert [m.out_features for m in small.classifier if isinstance(m, nn.Linear)] == [512, 512, 100]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in small.modules()) == 13
    cifar = build_model("vgg19", num_classes=10, input_shape=(3, 32, 32), width=0.25)
    assert sum(isinstance(m, nn.Conv2d) for m in cifar.modules()) == 16
    assert cifar.classifier[0].in_features == 128
    imagenet = build_model("vgg16", num_classes=10, input_shape=(3, 64, 64), width=0.25)
    assert imagenet.classifier[0].in_features == 128 * 7 * 7 and imagenet.classifier[0].out_features == 1024


def test_vit_attention_inner_dimension_and_patches():
    vit = build_model("vit", num_classes=10, input_shape=(3, 32, 32))
    attention = vit.blocks[0][0]
    assert (attention.qkv.in_features, attention.qkv.out_features) == (512, 3 * 384)
    assert (attention.proj.in_features, attention.proj.out_features) == (384, 512)
    assert vit.pos_embedding.shape == (1, 65, 512) and len(vit.blocks) == 4
    assert vit.blocks[0][1].net[1].out_features == 256
    x = torch.randn(2, 3, 8, 8)
    patches = vit.patches(x)
    assert patches.shape == (2, 4, 48)
    # patch (row 1, col 0), entry (p1=2, p2=3, c=1)
    assert patches[1, 2, (2 * 4 + 3) * 3 + 1] == x[1, 1, 4 + 2, 0 + 3]
    big = build_model("vit", num_classes=10, input_shape=(3, 224, 224), width=0.25)
    assert big.patch_size == 16 and big.pos_embedding.shape == (1, 197, 128)


def test_width_scales_channels_and_keeps_at_least_one():
    half = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=0.5)
    assert half.fc.in_features == 32
    tiny = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=0.01)
    assert tiny.conv1.out_channels == 1
    odd = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=0.3)  # 5, 10, 19 channels
    assert odd(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def _train_steps(model, x, y, steps, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_dense_training_steps_decrease_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, input_shape=(3, 16, 16), width=0.25)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    losses = _train_steps(model, x, y, 5, 0.05)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["mlp", "resnet20", "vgg16_small", "vit"])
def test_sparsified_training_step(name):
    torch.manual_seed(0)
    kwargs = {"dropout": 0.0, "emb_dropout": 0.0} if name == "vit" else {}
    model = build_model(name, num_classes=5, input_shape=(3, 32, 32), width=0.25, **kwargs)
    sparsetrain.sparsify(model, 0.9, distribution="uniform", seed=1)  # uniform: no layer left dense
    layers = sparsetrain.sparse_layers(model)
    assert layers and not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    before = {n: m.values.detach().clone() for n, m in layers.items()}
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4) % 5
    losses = _train_steps(model, x, y, 2, 0.01)
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = sum(not torch.equal(before[n], m.values) for n, m in layers.items())
    assert changed == len(layers)


def test_unknown_model_option_and_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="'resnet20'.*got 'resnet99'"):
        build_model("resnet99", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(ConfigError, match="hiden.*allowed options: activation, hidden"):
        build_model("mlp", num_classes=10, input_shape=(4,), hiden=(3,))
    with pytest.raises(ConfigError, match="width"):
        build_model("mlp", num_classes=10, input_shape=(4,), width=0)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("resnet20", num_classes=10, input_shape=(32, 32))
    with pytest.raises(ConfigError, match="patch_size=5"):
        build_model("vit", num_classes=10, input_shape=(3, 32, 32), patch_size=5)
    with pytest.raises(ConfigError, match="classifier"):
        build_model("vgg16", num_classes=10, input_shape=(3, 32, 32), classifier="huge")
    assert model_options("resnet20") == {}


def test_seed_fixes_initial_values_without_touching_the_global_rng():
    torch.manual_seed(11)
    expected = torch.rand(1)
    torch.manual_seed(11)
    a = build_model("vit", num_classes=3, input_shape=(3, 8, 8), width=0.125, seed=4)
    assert torch.equal(torch.rand(1), expected)
    b = build_model("vit", num_classes=3, input_shape=(3, 8, 8), width=0.125, seed=4)
    c = build_model("vit", num_classes=3, input_shape=(3, 8, 8), width=0.125, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.cls_token, c.cls_token)
