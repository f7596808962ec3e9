"""Built-in feature extractors for ``fm eval``: classifier, inception and points (imported when first loaded)."""

from fmcli.hookspecs import hookimpl
from fmcli.specs import ExtractorSpec, lazy_callable


@hookimpl
def fm_register_feature_extractors(register):
    register(
        ExtractorSpec(
            name="classifier",
            description="small CNN trained on the data set's training split on first use, cached (128-d); "
            "default for 1-channel or small images such as MNIST; also gives conditional accuracy",
            load=lazy_callable("fmcli.eval.classifier:trained_classifier"),
            dim=128,  # fmcli.eval.classifier.FEATURE_DIM
        )
    )
    register(
        ExtractorSpec(
            name="inception",
            description="FID Inception-v3 (2048-d, from torch-fidelity: pip install 'fmcli[inception]'), figures "
            "comparable to papers; default for RGB >= 32x32",
            load=lazy_callable("fmcli.eval.inception:load_inception"),
            dim=2048,
        )
    )
    register(
        ExtractorSpec(
            name="points",
            description="the coordinates themselves, for 2-D toy data (default there)",
            load=lazy_callable("fmcli.eval.points:load_points"),
        )
    )
