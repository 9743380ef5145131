"""The authors' recipe: their optimizer, the dataset configs, the loss's mask weighting, and a
training loop that leaves the device alone between optimizer steps."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

import vglaw
from vglaw.config import LossSection, load_config
from vglaw.data import GroundingDataset, collate, load_tokenizer
from vglaw.data.transforms import TrainAugment, make_sample
from vglaw.engine.loop import TrainState, train_one_epoch
from vglaw.engine.losses import grounding_loss
from vglaw.engine.optim import AdamWeightDecay, build_optimizer, build_scheduler
from vglaw.engine.text_cache import FrozenTextCache
from vglaw.engine.train import build_train_model

from conftest import write_run_config

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- optimizer
def mindspore_adam_weight_decay(w, grads, *, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0):
    """MindSpore's documented nn.AdamWeightDecay update, written out in float64 NumPy:
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; update = m / (sqrt(v) + eps) (+ wd w if wd > 0);
    w = w - lr update. No bias correction."""
    m, v, out = np.zeros_like(w), np.zeros_like(w), [w.copy()]
    for g in grads:
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        update = m / (np.sqrt(v) + eps)
        if weight_decay > 0:
            update = update + weight_decay * w
        w = w - lr * update
        out.append(w.copy())
    return out


def test_adam_weight_decay_follows_mindsporess_formula_for_three_steps():
    rng = np.random.default_rng(0)
    w0 = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    grads = {k: [rng.standard_normal(v.shape) * 10 ** -i for i in range(3)] for k, v in w0.items()}
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in w0.items()}
    # two groups as the recipe builds them: own lr, the optimizer's weight decay, one without decay
    opt = AdamWeightDecay([{"params": [params["a"]], "lr": 1e-3}, {"params": [params["b"]], "lr": 1e-2,
                                                                    "weight_decay": 0.0}], weight_decay=0.05)
    for step in range(3):
        for k, p in params.items():
            p.grad = torch.tensor(grads[k][step])
        opt.step()
        expected_a = mindspore_adam_weight_decay(w0["a"], grads["a"][:step + 1], lr=1e-3, weight_decay=0.05)
        expected_b = mindspore_adam_weight_decay(w0["b"], grads["b"][:step + 1], lr=1e-2)
        np.testing.assert_allclose(params["a"].detach().numpy(), expected_a[-1], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(params["b"].detach().numpy(), expected_b[-1], rtol=1e-12, atol=1e-15)
    # not torch's AdamW: its bias correction makes the first step ~ lr, here it is ~ 3.2 lr
    first = mindspore_adam_weight_decay(w0["b"], grads["b"][:1], lr=1e-2)[1] - w0["b"]
    np.testing.assert_allclose(np.abs(first), 1e-2 / np.sqrt(1e-3) * 0.1, rtol=1e-3)


def test_recipe_optimizer_decays_every_parameter_of_every_group_and_resumes_its_state():
    cfg = load_config(ROOT / "configs/synth_tiny.yaml", ["optim.optimizer=adam_weight_decay", "optim.eps=1e-6"])
    model = build_train_model(cfg)
    opt = build_optimizer(model, cfg.optim)
    assert isinstance(opt, AdamWeightDecay)
    assert {g["name"] for g in opt.param_groups} == {"backbone", "rest"}  # the frozen text is left out
    assert all(g["weight_decay"] == 1e-4 and g["eps"] == 1e-6 for g in opt.param_groups)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable  # biases and norms included
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    opt.step()
    again = AdamWeightDecay(opt.param_groups)
    again.load_state_dict(opt.state_dict())
    p = next(p for p in model.parameters() if p.requires_grad)
    assert torch.equal(again.state[p]["exp_avg"], opt.state[p]["exp_avg"])
    with pytest.raises(ValueError, match="optim.optimizer"):
        build_optimizer(model, load_config(None, ["optim.optimizer=sgd"]).optim)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["refcoco", "refcoco+", "refcocog", "refclef"])
def test_dataset_configs_carry_the_authors_recipe(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert (cfg.run.epochs, cfg.optim.drop_epochs, cfg.optim.drop_factor) == (20, [10], 0.1)
    assert (cfg.data.translate, cfg.data.multiscale, cfg.data.crop) == (True, False, "canvas")
    assert (cfg.optim.lr, cfg.optim.lr_backbone, cfg.optim.lr_text) == (1e-4, 1e-5, 1e-5)
    assert (cfg.optim.optimizer, cfg.optim.eps, cfg.optim.weight_decay) == ("adam_weight_decay", 1e-6, 1e-4)
    assert (cfg.optim.effective_batch, cfg.optim.clip_grad_norm, cfg.optim.warmup_factor) == (256, 0.15, 0.01)
    # 8000 loader iterations of 8 samples on one device, in optimizer steps of 256 samples
    assert cfg.optim.warmup_epochs is None and cfg.optim.warmup_steps == 8000 * 8 // 256
    model = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(model, cfg.optim, steps_per_epoch=471)  # RefCOCO: 120,624 // 256
    lrs = []
    for _ in range(20 * 471):
        lrs.append(model.param_groups[0]["lr"])
        model.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[125] == pytest.approx(0.01 + 0.99 * 125 / 250)
    assert lrs[250] == 1.0 and lrs[10 * 471 - 1] == 1.0 and lrs[10 * 471] == pytest.approx(0.1)


class _ThreeGroups(torch.nn.Module):
    """Parameters named as VG-LAW's three optimizer groups (ViT, BERT, the rest)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.text_encoder, self.head = (torch.nn.Linear(1, 1) for _ in range(3))


def _group_lrs(cfg, epochs: int, steps_per_epoch: int) -> list[dict]:
    """Each optimizer step's lr per group, stepping the config's optimizer and scheduler."""
    optimizer = build_optimizer(_ThreeGroups(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("name", ["refcoco", "refcoco+", "refcocog", "refclef"])
def test_authors_code_configs_keep_each_groups_lr_constant_for_all_twenty_epochs(name):
    """Their published code builds the optimizer with fixed group lrs and never applies the
    warmup + step list it computes: 20 epochs at 1e-4 / 1e-5 / 1e-5, whatever the step."""
    cfg = load_config(ROOT / "configs" / f"{name}_authors_code.yaml")
    default = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.run.epochs == 20 and cfg.data == default.data and cfg.model == default.model
    assert cfg.run.out != default.run.out
    lrs = _group_lrs(cfg, cfg.run.epochs, steps_per_epoch=471)  # RefCOCO: 120,624 // 256
    assert all(lr == {"backbone": 1e-5, "text_encoder": 1e-5, "rest": 1e-4} for lr in lrs)
    assert _group_lrs(default, 1, steps_per_epoch=471)[0]["rest"] == pytest.approx(1e-6)  # the default warms up


def test_demo_config_pins_what_the_bundled_checkpoint_was_trained_with():
    cfg = load_config(ROOT / "configs/synth_tiny.yaml")
    assert (cfg.optim.optimizer, cfg.optim.eps, cfg.data.multiscale, cfg.data.crop) == ("adamw", 1e-8, True, "random")
    assert (cfg.run.epochs, cfg.optim.drop_epochs, cfg.optim.warmup_epochs) == (14, [10, 13], 0.5)


# ----------------------------------------------------------------------------- augmentation
def test_the_authors_crop_leaves_the_image_alone_without_multiscale_and_trims_only_an_enlarged_one():
    image = torch.arange(120 * 200 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(120, 200, 3)
    from PIL import Image
    sample = make_sample(Image.fromarray(image.numpy()), (150, 40, 40, 30), None, "a cat")
    plain = TrainAugment(200, crop_prob=1.0, flip_prob=0.0, translate=False)  # the recipe: multi-scale off
    random_size = TrainAugment(200, crop="random", crop_prob=1.0, flip_prob=0.0, translate=False)
    changed = 0
    for seed in range(10):
        out, lb = plain(sample, torch.Generator().manual_seed(seed))
        assert lb.scale == (1.0, 1.0) and out.box[0].tolist() == [150, 80, 190, 110]  # centred vertically
        out, lb = random_size(sample, torch.Generator().manual_seed(seed))
        changed += lb.scale != (1.0, 1.0) or out.box[0].tolist() != [150, 80, 190, 110]
    assert changed > 0  # the random-size crop does change it
    enlarged = TrainAugment(200, multiscale=True, scale_step=25, crop_prob=1.0, flip_prob=0.0, translate=False)
    widths = set()
    for seed in range(20):
        out, _ = enlarged(sample, torch.Generator().manual_seed(seed))
        x0, y0, x1, y1 = out.box[0].tolist()
        assert out.image.shape == (3, 200, 200) and 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200
        # the box is whole and only scaled: the multi-scale factor (200 + 25 k) / 200 on both axes
        k = round(((x1 - x0) / 40 * 200 - 200) / 25)
        assert (x1 - x0, y1 - y0) == pytest.approx((40 * (200 + 25 * k) / 200, 30 * (200 + 25 * k) / 200), abs=1)
        widths.add(round(x1 - x0))
    assert max(widths) > 40  # enlarged images were trimmed to the canvas, not shrunk back
    with pytest.raises(ValueError, match="data.crop"):
        TrainAugment(200, crop="centre")


# ----------------------------------------------------------------------------- loss
def test_mask_terms_average_over_the_samples_that_have_masks():
    g = torch.Generator().manual_seed(0)
    out = {"boxes": torch.rand(4, 4, generator=g) * 0.5 + 0.25, "mask_logits": torch.randn(4, 1, 16, 16, generator=g)}
    batch = {"box": torch.rand(4, 4, generator=g) * 0.5 + 0.25, "mask": (torch.rand(4, 16, 16, generator=g) > 0.5).byte(),
             "has_mask": torch.tensor([True, False, True, False])}
    losses = grounding_loss(out, batch, LossSection())
    # by hand on the rows with a mask: torchvision's focal loss over them, dice per row
    logits, gt = out["mask_logits"][[0, 2], 0], batch["mask"][[0, 2]].float()
    focal = sigmoid_focal_loss(logits, gt, alpha=0.25, gamma=2.0, reduction="mean")
    p = logits.sigmoid().flatten(1)
    dice = (1 - (2 * (p * gt.flatten(1)).sum(1) + 1) / (p.sum(1) + gt.flatten(1).sum(1) + 1)).mean()
    torch.testing.assert_close(losses["focal"], focal)
    torch.testing.assert_close(losses["dice"], dice)
    batch["has_mask"] = torch.zeros(4, dtype=torch.bool)  # REC-only data: no mask terms, graph kept
    out["mask_logits"].requires_grad_(True)
    losses = grounding_loss(out, batch, LossSection())
    assert losses["focal"] == 0 and losses["dice"] == 0 and losses["loss"].requires_grad


# ----------------------------------------------------------------------------- host reads
@pytest.fixture
def host_reads(monkeypatch):
    """Every read of a tensor's value by the host (``item``, ``tolist``, ``bool``, ``float``,
    ``int``) made from vglaw's own code: on a GPU each is a wait for the device."""
    package, reads = str(Path(vglaw.__file__).parent), []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(package):
                reads.append(f"{_name} in {Path(caller.co_filename).name}:{caller.co_name}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize("cache_text", [False, True])
def test_training_reads_the_device_at_most_four_times_per_optimizer_step(tmp_path, synth_prepared, host_reads,
                                                                         cache_text):
    from torch.utils.tensorboard import SummaryWriter

    cfg = load_config(write_run_config(tmp_path / "cfg.yaml", synth_prepared, tmp_path / "run", batch=2,
                                       effective_batch=4), [f"model.cache_text={str(cache_text).lower()}"])
    torch.manual_seed(0)
    model = build_train_model(cfg)
    ds = GroundingDataset(synth_prepared, "train", tokenizer=load_tokenizer(), img_size=64, max_len=12)
    batches = [collate([ds[(2 * i) % len(ds)], ds[(2 * i + 1) % len(ds)]]) for i in range(12)]  # 6 steps of 2
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch=6)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cache = FrozenTextCache(model.text_encoder) if cache_text else None
    host_reads.clear()  # only the loop's reads count
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        state = TrainState()
        means = train_one_epoch(model, batches, optimizer, scheduler, scaler, state=state, accum_steps=2,
                                device=torch.device("cpu"), precision="fp32", loss_weights=cfg.loss,
                                clip_grad_norm=cfg.optim.clip_grad_norm, writer=writer, text_cache=cache)
    assert (state.global_step, state.step_in_epoch) == (6, 6) and np.isfinite(means["loss"])
    print(f"{len(host_reads)} host reads in 6 optimizer steps: {sorted(set(host_reads))}")
    assert len(host_reads) <= 4 * 6, host_reads
