"""``python -m synthrel_lightning export_model``: a trained OOD segmenter as ONNX, TorchScript or a pretrained folder.

The options are the parameters of :func:`synthrel_lightning.deploy.from_source.export_model`::

    python -m synthrel_lightning export_model --source outputs/run/last.ckpt --run_config outputs/run/config.yaml \\
        --output model.onnx --format onnx --input_size [1024,2048]

The exported graph takes ``image`` (B,3,H,W) and returns ``class_scores`` (temperature-scaled),
``prediction`` and ``ood_score``; it is checked against PyTorch before it is kept.
"""

from __future__ import annotations

from typing import Any

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs, print_json_on_rank_zero


def build_parser() -> Any:
    """The jsonargparse parser of ``export_model``, built from :func:`export_model`'s signature."""
    from synthrel_lightning.deploy.from_source import export_model

    return function_parser(
        "export_model",
        export_model,
        description="Export a trained OOD segmenter (temperature and OOD score folded in) for deployment.",
    )


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run ``export_model`` and print what was written (and how closely it reproduces PyTorch) as JSON."""
    from synthrel_lightning.deploy.from_source import export_model

    _, kwargs = parse_kwargs(build_parser(), export_model, args)
    result = export_model(**kwargs)
    print_json_on_rank_zero(result)
    return result


if __name__ == "__main__":
    main()
