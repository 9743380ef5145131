"""Loading weights from the formats people have, without running code from the file.

* :mod:`.unpickle`: the restricted unpickler (numpy arrays and plain containers only), for
  detectron2 pickles and the REFER API's refs files;
* :mod:`.state`: copying a state dict into a module, every missing, unexpected or mis-shaped key
  named (:class:`~.state.LoadReport`);
* :mod:`.vit`: detectron2 ViTDet ``.pkl`` and MAE / timm ``.pth`` backbones, resized to the model;
* :mod:`.text`: Hugging Face BERT directories;
* :mod:`.mindspore`: the authors' MindSpore checkpoints.

The submodules are imported by name (``from vglaw.weights.vit import load_detectron2_vit``) so
that reading a pickle does not import the model.
"""
