"""Training-step time of the demo config (batch 32) with the text encoder's work cut three ways,
in interleaved rounds (BENCHMARKS.md): token columns padded to max_len ("full"), cut to the
batch's longest expression ("cut", what collate does), and cut with the frozen encoder's output
taken from a warm FrozenTextCache ("cached", model.cache_text after the first epoch).
python benchmarks/text_cost.py, after vglaw synth/prepare of the demo set into data/demo-train."""
import statistics
import time

import torch
from vglaw.config import load_config
from vglaw.data import GroundingDataset, collate, load_tokenizer
from vglaw.data.transforms import normalize_canvas
from vglaw.engine.losses import grounding_loss
from vglaw.engine.text_cache import FrozenTextCache
from vglaw.engine.train import build_train_model

cfg = load_config("configs/synth_tiny.yaml", ["data.prepared=data/demo-train/prepared"])
model = build_train_model(cfg)  # the text encoder frozen, as model.freeze_text makes it
model.train(); model.text_encoder.eval()
tok = load_tokenizer(model.config.text_encoder)
ds = GroundingDataset(cfg.data.prepared, "train", tokenizer=tok, img_size=model.img_size, max_len=model.config.max_len,
                      train=True)
items = [ds[i] for i in range(32)]
cut = collate(items)
full = dict(cut, input_ids=torch.stack([i["input_ids"] for i in items]), attention_mask=torch.stack([i["attention_mask"] for i in items]))
print("cut length", cut["input_ids"].shape[1])
cache = FrozenTextCache(model.text_encoder)
cache(cut["input_ids"], cut["attention_mask"])  # warm: every expression seen once
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def step(batch, use_cache=False):
    text = cache(batch["input_ids"], batch["attention_mask"]) if use_cache else None
    out = model(normalize_canvas(batch["image"], batch["extent"]), batch["input_ids"], batch["attention_mask"], text=text)
    loss = grounding_loss(out, batch, cfg.loss)["loss"]; loss.backward(); opt.step(); opt.zero_grad()


runs = {"full": lambda: step(full), "cut": lambda: step(cut), "cached": lambda: step(cut, use_cache=True)}
for run in runs.values():
    run()
t = {name: [] for name in runs}
for _ in range(4):
    for name, run in runs.items():
        s = time.perf_counter(); [run() for _ in range(4)]; t[name].append((time.perf_counter() - s) / 4)
print({k: [round(x, 3) for x in v] for k, v in t.items()})
for name in ("cut", "cached"):
    print(f"median ratio {name}/full", round(statistics.median(c / f for c, f in zip(t[name], t["full"])), 3))
print("median ratio cached/cut", round(statistics.median(c / f for c, f in zip(t["cached"], t["cut"])), 3))
