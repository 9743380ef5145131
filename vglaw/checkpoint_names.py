"""The file names of a checkpoint directory. The format itself is :mod:`vglaw.model.io`'s; the
names are here, below the model, because the Hub download (:mod:`vglaw.hub`) fetches the same files."""
CONFIG_NAME = "config.json"  # VGLAW.config_dict(): rebuilds the architecture
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"  # the model card, as the Hugging Face Hub shows it
TRAINING_NAME = "training.json"  # optional: the training record the card is rendered from
CALIBRATION_NAME = "calibration.json"  # optional: the confidence calibrator
CHECKPOINT_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, TRAINING_NAME, CALIBRATION_NAME]
