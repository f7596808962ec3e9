"""Built-in feature extractors for ``fm eval``: classifier, inception and points."""

from fmcli.eval.classifier import trained_classifier
from fmcli.eval.features import ExtractorSpec
from fmcli.eval.inception import load_inception
from fmcli.eval.points import load_points
from fmcli.hookspecs import hookimpl


@hookimpl
def fm_register_feature_extractors(register):
    register(ExtractorSpec(
        name="classifier",
        description="small CNN trained on the data set's training split on first use, cached (128-d); "
                    "default for 1-channel or small images such as MNIST; also gives conditional accuracy",
        load=trained_classifier,
    ))
    register(ExtractorSpec(
        name="inception",
        description="FID Inception-v3 (2048-d, from torch-fidelity: pip install 'fmcli[inception]'), figures "
                    "comparable to papers; default for RGB >= 32x32",
        load=load_inception,
    ))
    register(ExtractorSpec(
        name="points",
        description="the coordinates themselves, for 2-D toy data (default there)",
        load=load_points,
    ))
