"""The choices options accept, and names the CLI checks, importable without TensorFlow or numpy (for `--help`)."""

BACKBONES = ("resnet50", "inceptionv3", "mobilenetv2", "efficientnetb0", "vgg16", "resnet18", "small_cnn")
TASKS = ("multilabel", "multiclass")
MISSING_LABELS = ("mask", "mean", "mf")
CLASS_WEIGHTS = ("none", "balanced")
# `train --thresholds`: 0.5 for every label, or each label's best on the validation list.
THRESHOLDS = ("fixed", "tuned")
PRECISIONS = ("fp32", "mixed_bfloat16", "mixed_float16")
EXTRACT_PRECISIONS = ("fp32", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multiworker")
# The suffix that makes a path a feature folder (features.npy, paths.txt, metadata.json).
FEATURE_FOLDER_SUFFIX = ".feat"
