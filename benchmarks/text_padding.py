"""Training-step time with full (max_len) against cut token padding, interleaved rounds (BENCHMARKS.md):
python benchmarks/text_padding.py, after vglaw synth/prepare of the demo set into data/demo-train."""
import time, torch, statistics
from vglaw.config import load_config
from vglaw.data import GroundingDataset, collate, load_tokenizer
from vglaw.model.build import build_model
from vglaw.engine.losses import grounding_loss
cfg = load_config("configs/synth_tiny.yaml", ["data.prepared=data/demo-train/prepared"])
model = build_model(cfg.model.name, **cfg.model.overrides)
model.text_encoder.requires_grad_(False); model.train(); model.text_encoder.eval()
tok = load_tokenizer(model.config.text_encoder)
ds = GroundingDataset(cfg.data.prepared, "train", tokenizer=tok, img_size=model.img_size, max_len=model.config.max_len,
                      train=True)
items = [ds[i] for i in range(32)]
cut = collate(items)
full = dict(cut, input_ids=torch.stack([i["input_ids"] for i in items]), attention_mask=torch.stack([i["attention_mask"] for i in items]))
print("cut length", cut["input_ids"].shape[1])
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
def step(batch):
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
    loss = grounding_loss(out, batch, cfg.loss)["loss"]; loss.backward(); opt.step(); opt.zero_grad()
step(full); step(cut)
t = {"full": [], "cut": []}
for _ in range(4):
    for name, b in (("full", full), ("cut", cut)):
        s = time.perf_counter(); [step(b) for _ in range(4)]; t[name].append((time.perf_counter() - s) / 4)
print({k: [round(x, 3) for x in v] for k, v in t.items()}, "median ratio cut/full", statistics.median(c / f for c, f in zip(t["cut"], t["full"])))
