"""Where the demo checkpoint's box misses go on a fresh synthetic set (README "Demo numbers"):
python benchmarks/demo_errors.py CHECKPOINT FOLDER SEED IMAGES, e.g. vglaw/assets/demo /tmp/s777 777 300."""
import sys

import numpy as np
import torch
from pathlib import Path
from torch.utils.data import DataLoader
from torchvision.ops import box_iou, box_convert, masks_to_boxes
from vglaw.inference.predictor import Grounder
from vglaw.data import GroundingDataset, collate, prepare
from vglaw.data.synth import generate
from vglaw.data.transforms import normalize_canvas
from vglaw.data.masks import mask_iou
ck, root, seed, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = Grounder.from_pretrained(ck); model = g.model.eval()
if not (root / "prepared").exists():
    generate(root, seed=seed, split_sizes={"val": n})
    prepare(fmt="refer", data_root=root, dataset="synthref", image_root=root / "images", out=root / "prepared")
ds = GroundingDataset(root / "prepared", "val", tokenizer=g.tokenizer, img_size=model.img_size, max_len=model.config.max_len)
rows = []
with torch.inference_mode():
    for batch in DataLoader(ds, batch_size=64, collate_fn=collate):
        out = model(normalize_canvas(batch["image"], batch["extent"]), batch["input_ids"], batch["attention_mask"])
        probs = out["mask_logits"][:, 0].float().sigmoid()
        for j, meta in enumerate(batch["meta"]):
            r = ds.records[meta["index"]]
            box = meta["letterbox"].boxes_to_original(out["boxes"][j:j + 1])[0]
            gt = box_convert(torch.tensor(r["box"])[None].float(), "xywh", "xyxy")
            pm = meta["letterbox"].maps_to_original(probs[j:j + 1])[0] > g.mask_threshold
            gm = torch.as_tensor(ds.gt_mask(meta["index"])).bool()
            biou = box_iou(box[None].float(), gt)[0, 0].item()
            miou = mask_iou(pm, gm)
            mb = box_iou(masks_to_boxes(pm[None].float()), gt)[0, 0].item() if pm.any() else 0.0
            cx, cy = ((box[0] + box[2]) / 2).item(), ((box[1] + box[3]) / 2).item()
            inside = bool(gm[int(min(max(cy, 0), gm.shape[0] - 1)), int(min(max(cx, 0), gm.shape[1] - 1))])
            rows.append((biou, miou, mb, inside, r["sentence"], gt[0, 2:].sub(gt[0, :2]).prod().item() / gm.numel()))
b = np.array([x[0] for x in rows]); m = np.array([x[1] for x in rows]); mb = np.array([x[2] for x in rows])
ins = np.array([x[3] for x in rows]); area = np.array([x[5] for x in rows])
print(f"seed {seed}: n {len(rows)} box prec {np.mean(b>=.5):.3f} mask-IoU>=.5 {np.mean(m>=.5):.3f} box-from-mask prec {np.mean(mb>=.5):.3f}")
fail = b < 0.5
print(f"box fails {fail.sum()}: of which mask ok {np.sum(fail & (m>=.5))}, box centre inside gt {np.sum(fail & ins)}, box IoU in [.3,.5) {np.sum(fail & (b>=.3))}")
print("box prec by area tercile:", [f"{np.mean(b[(area>=lo)&(area<hi)]>=.5):.2f}" for lo, hi in zip(np.quantile(area,[0,1/3,2/3]), np.quantile(area,[1/3,2/3,1])+1e-9)])
for x in [r for r in rows if r[0] < .5][:12]: print(f"  box {x[0]:.2f} mask {x[1]:.2f} {x[4]!r}")
