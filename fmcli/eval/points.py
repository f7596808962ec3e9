"""The ``points`` extractor: for low-dimensional point data the coordinates are the features."""

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.eval.features import ExtractorContext


class PointsExtractor:
    name = "points"
    identity = "points"
    num_classes = 0
    info: dict = {}

    def __init__(self, dim: int):
        self.dim = dim

    @torch.no_grad()
    def embed(self, points: Tensor) -> tuple[Tensor, None]:
        return points.reshape(points.shape[0], -1), None


def load_points(context: ExtractorContext) -> PointsExtractor:
    if len(context.shape) != 1:
        raise FMError(
            f"the 'points' extractor is for point data, not images of shape {list(context.shape)}; "
            f"use --extractor classifier or inception"
        )
    return PointsExtractor(context.shape[0])
