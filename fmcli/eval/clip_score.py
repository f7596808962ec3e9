"""The CLIP score of a text model's images, with a CLIP from a local directory (nothing is ever downloaded).

CLIPScore (Hessel et al., 2021, without their 2.5 weight) = 100 * max(cos(image embedding, prompt embedding), 0),
averaged over the images, each with the prompt it was drawn for; ``fm eval`` reports it beside the same on the real
test images those prompts were written for (the reference a model is judged against).

The directory is a whole ``CLIPModel`` saved with ``save_pretrained`` (its vision and text towers, config.json and
tokenizer, e.g. openai/clip-vit-base-patch32's fetched on a machine with a network), given as ``fm eval
--clip-path DIR`` or FM_CLIP_PATH. transformers is imported only in here's functions and runs offline. Images are
prepared as the directory's preprocessor_config.json says (its resize, centre crop, mean and std; without one,
CLIP's standard mean and std at the vision tower's image size): 8-bit images to [0, 1], bicubic resize (antialiased)
of the shorter side, centre crop, normalise; one channel is repeated to three. Prompts are cut to CLIP's context.
"""

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fmcli.errors import FMError
from fmcli.eval.features import Progress
from fmcli.text.clip import quiet, transformers_module, weight_files

ENV_PATH = "FM_CLIP_PATH"
WHERE = (
    "put a whole CLIPModel saved with save_pretrained there (vision and text towers, e.g. "
    "openai/clip-vit-base-patch32's, fetched on a machine with a network) and point --clip-path or FM_CLIP_PATH at it"
)
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation (the processor's defaults)
STD = (0.26862954, 0.26130258, 0.27577711)


def clip_directory(path: str | os.PathLike) -> Path:
    """The CLIP directory at ``path``, checked to hold weights, a config with a vision tower and a tokenizer; one
    line saying what is missing and where to put it otherwise. Reads no weights."""
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise FMError(f"no CLIP model at {directory} (not a directory): {WHERE}")
    if not weight_files(directory):
        raise FMError(f"{directory} holds no CLIP weights (model.safetensors or pytorch_model.bin): {WHERE}")
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        raise FMError(f"{directory} holds no readable config.json: {WHERE}") from None
    if "vision_config" not in config:
        raise FMError(f"{directory} holds a CLIP text tower only; the CLIP score needs its vision tower too: {WHERE}")
    if not (directory / "tokenizer.json").is_file() and not (directory / "vocab.json").is_file():
        raise FMError(f"{directory} holds no CLIP tokenizer (vocab.json and merges.txt, or tokenizer.json): {WHERE}")
    return directory


def _side(value, default: int) -> int:
    """A processor size entry (an int, or a dict of shortest_edge / height) as one side in pixels."""
    if isinstance(value, dict):
        value = value.get("shortest_edge", value.get("height"))
    return int(value) if value else default


def processor_settings(directory: Path) -> dict:
    """The directory's preprocessor_config.json ({} without one); one line when it is not JSON."""
    path = directory / "preprocessor_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as error:
        raise FMError(f"{path} is not readable JSON ({error}): {WHERE}") from None


class ClipModel:
    """A CLIPModel on ``device`` with its tokenizer and image preparation; embeddings are unit vectors (CPU)."""

    def __init__(self, directory: Path, device: torch.device | str = "cpu"):
        transformers = transformers_module()
        try:
            with quiet(transformers):
                model = transformers.CLIPModel.from_pretrained(str(directory), local_files_only=True)
                tokenizer_class = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
                self.tokenizer = tokenizer_class.from_pretrained(str(directory), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - whatever transformers makes of a broken directory
            reason = " ".join(str(error).split())[:300]
            raise FMError(f"could not load the CLIP model at {directory} ({reason}): {WHERE}") from None
        self.model, self.device, self.directory = model.eval().requires_grad_(False).to(device), device, directory
        settings = processor_settings(directory)
        crop = _side(settings.get("crop_size"), model.config.vision_config.image_size)
        self.resize = _side(settings.get("size"), crop) if settings.get("do_resize", True) else None
        self.crop = crop if settings.get("do_center_crop", True) else None
        self.mean = torch.tensor(settings.get("image_mean", MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(settings.get("image_std", STD)).view(1, 3, 1, 1)
        self.context = model.config.text_config.max_position_embeddings

    def pixels(self, images_uint8: Tensor) -> Tensor:
        """uint8 images [N, C, H, W] -> CLIP's pixel values [N, 3, S, S] (see the module's docstring)."""
        images = images_uint8.float() / 255
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        h, w = images.shape[-2:]
        if self.resize is not None and min(h, w) != self.resize:
            size = (self.resize, round(w * self.resize / h)) if h <= w else (round(h * self.resize / w), self.resize)
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        if self.crop is not None:
            top, left = (images.shape[-2] - self.crop) // 2, (images.shape[-1] - self.crop) // 2
            images = images[..., max(top, 0) : max(top, 0) + self.crop, max(left, 0) : max(left, 0) + self.crop]
        return (images.clamp(0, 1) - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, images_uint8: Tensor) -> Tensor:
        output = self.model.vision_model(pixel_values=self.pixels(images_uint8).to(self.device))
        return F.normalize(self.model.visual_projection(output.pooler_output).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> Tensor:
        with quiet(transformers_module()):
            batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.context,
                                   return_tensors="pt")  # fmt: skip
        output = self.model.text_model(input_ids=batch["input_ids"].to(self.device),
                                       attention_mask=batch["attention_mask"].to(self.device))  # fmt: skip
        return F.normalize(self.model.text_projection(output.pooler_output).float(), dim=-1).cpu()


def clip_scores(
    clip: ClipModel, images_uint8: Tensor, prompts: list[str], *, batch_size: int = 64,
    progress: Progress | None = None, stage: str = "CLIP score",
) -> Tensor:  # fmt: skip
    """100 * max(cos(image i, prompt i), 0) for every image [N] (each prompt encoded once)."""
    distinct = list(dict.fromkeys(prompts))
    text = torch.cat([clip.embed_prompts(distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)])
    row = {prompt: i for i, prompt in enumerate(distinct)}
    scores = []
    for start in range(0, len(prompts), batch_size):
        image = clip.embed_images(images_uint8[start : start + batch_size])
        own = text[[row[p] for p in prompts[start : start + batch_size]]]
        scores.append(100 * (image * own).sum(-1).clamp(min=0))
        if progress:
            progress(stage, min(start + batch_size, len(prompts)), len(prompts))
    return torch.cat(scores) if scores else torch.zeros(0)


def clip_source(path: str | os.PathLike | None) -> tuple[Path | None, str | None]:
    """Where the CLIP score's model is: ``--clip-path`` (checked: one line when unusable), else FM_CLIP_PATH (a
    directory that will not do becomes a note, as it may hold a text tower for ``--text-encoder clip``), else none.
    Returns (directory or None, note or None)."""
    if path is not None:
        return clip_directory(path), None
    if not os.environ.get(ENV_PATH):
        return None, f"no CLIP score: no local CLIP (--clip-path DIR or {ENV_PATH})"
    try:
        return clip_directory(os.environ[ENV_PATH]), None
    except FMError as error:
        return None, f"no CLIP score: {ENV_PATH}: {error}"
