"""Loading weights from the formats people have, without running code from the file.

* :mod:`.vit`: detectron2 ViTDet ``.pkl`` and MAE / timm ``.pth`` backbones, resized to the model;
* :mod:`.text`: Hugging Face BERT directories;
* :mod:`.mindspore`: the authors' MindSpore checkpoints.

The submodules are imported by name (``from vglaw.weights.vit import load_detectron2_vit``).
They read pickles with :mod:`vglaw.unpickle` (the restricted unpickler: numpy arrays and plain
containers only, also used for the REFER API's refs files) and copy state dicts with
:func:`vglaw.model.state.load_state` (every missing, unexpected or mis-shaped key named).
"""
