"""The choices options accept, and names the CLI checks, importable without TensorFlow or numpy (for `--help`)."""

from image_toolkit.data_tools.errors import OptionError, require_package

BACKBONES = ("resnet50", "inceptionv3", "mobilenetv2", "efficientnetb0", "vgg16", "resnet18", "small_cnn")
TASKS = ("multilabel", "multiclass")
MISSING_LABELS = ("mask", "mean", "mf")
CLASS_WEIGHTS = ("none", "balanced")
# `train --thresholds`: 0.5 for every label, or each label's best on the validation list.
THRESHOLDS = ("fixed", "tuned")
PRECISIONS = ("fp32", "mixed_bfloat16", "mixed_float16")
# `--precision` of extraction and prediction: TensorFlow runs fp32 or mixed_bfloat16; OpenVINO (`--runtime openvino`)
# fp32, bf16, or auto (bf16 where the CPU has native bf16, else fp32).
TENSORFLOW_PRECISIONS = ("fp32", "mixed_bfloat16")
OPENVINO_PRECISIONS = ("fp32", "bf16", "auto")
EXTRACT_PRECISIONS = ("fp32", "mixed_bfloat16", "bf16", "auto")
# `--runtime`: the engine that runs the forward pass.
RUNTIMES = ("tensorflow", "openvino")

STRATEGIES = ("default", "mirrored", "multiworker")
# The suffix that makes a path a feature folder (features.npy, paths.txt, metadata.json).
FEATURE_FOLDER_SUFFIX = ".feat"
# How `toolkit suggest` and `serve --suggest` rank images (data_tools.feedback.suggest).
SUGGEST_STRATEGIES = ("margin", "entropy", "random")
# `experiment --variants`: the arms (baseline, feedback, and the controls for which images and for how many steps).
EXPERIMENT_VARIANTS = ("baseline", "meta", "random", "steps")
# `experiment --use`: how feedback enters training.
FEEDBACK_USES = ("upsample", "weight", "relabel")
# `experiment --seeds` by default: on the digits proof (80 epochs, 5 seeds) meta - random varied with sd 0.045 from
# seed to seed, so a paired t interval of +-0.02 needs 23 seeds (README "Proof on real digits"). The summary
# prints the number each run's own spread asks for.
EXPERIMENT_SEEDS = 23


def default_precision(runtime: str, precision: str | None) -> str:
    """`--precision` when not given: OpenVINO picks by the CPU (auto), TensorFlow runs fp32."""
    return precision or ("auto" if runtime == "openvino" else "fp32")


def check_runtime(runtime: str, precision: str, *, tensorflow: tuple[str, ...] = TENSORFLOW_PRECISIONS) -> None:
    """Refuse an unknown `--runtime`, a missing openvino package, or a `--precision` the runtime does not run.

    `tensorflow` is what TensorFlow runs for the caller (predict: fp32 only).
    Importing nothing heavy, so `serve` checks its options before it serves.
    """
    if runtime not in RUNTIMES:
        raise OptionError(f"--runtime: expected one of {', '.join(RUNTIMES)}. Received: {runtime!r}.")
    if runtime == "openvino":
        require_package("openvino", "--runtime openvino", "the openvino package", "openvino")
    allowed = OPENVINO_PRECISIONS if runtime == "openvino" else tensorflow
    if precision not in allowed:
        raise OptionError(f"--precision {precision}: --runtime {runtime} runs {', '.join(allowed)}; "
                          f"pick one of those{' or --runtime openvino' if runtime == 'tensorflow' else ''}.")
