"""``clip``: a frozen CLIP text tower (transformers) loaded from a local directory; nothing is ever downloaded.

The directory is one saved with ``save_pretrained`` (a CLIPModel's, or a text tower's, e.g. openai/clip-vit-base-patch32
fetched on a machine with a network), given as ``build(captions, path=DIR)``, ``--text-encoder-path`` or FM_CLIP_PATH.
transformers runs offline (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1, ``local_files_only=True``).

Ids: CLIP's own id 0 is a real token, so ``tokenize`` returns CLIP's ids plus one, and 0 (``PAD``) is padding: after
a prompt's end token, and the whole row for the empty prompt (a prompt with no visible character). ``forward`` maps
them back, and encodes an all-PAD row as CLIP's tokenization of "" (its start and end tokens, attended).

tokens = the last hidden state (zero at padded positions), pooled = the pooler output (the end token), or the
projected text embedding when the directory has a text projection of the same width, mask = CLIP's attention mask.
Each distinct row is encoded once, in float32, and kept on the CPU (up to ``cache_mb``, 2048 MB: captions repeat
every epoch); the weights are not in the velocity model's state dict, and ``export()`` records their path and digest.
"""

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.text.base import EXAMPLES, PAD, TextEncoder, check_ids

ENV_PATH = "FM_CLIP_PATH"
INSTALL = "the clip text encoder needs transformers: pip install 'fmcli[clip]'"
WHERE = (
    "put a directory saved with save_pretrained there (e.g. openai/clip-vit-base-patch32's, fetched on a machine with "
    "a network) and point --text-encoder-path or FM_CLIP_PATH at it"
)
OPTIONS = ("path", "context", "cache_mb")
DEFAULT_CONTEXT = 77


def transformers_module():
    """transformers, imported offline; one line when it is missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise FMError(INSTALL) from None
    return transformers


@contextmanager
def quiet(transformers):
    """No warnings (unused vision weights, long sequences) nor progress bars from transformers meanwhile."""
    logging = transformers.logging
    before, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(before)
        if bars:
            logging.enable_progress_bar()


def weight_files(directory: Path) -> list[Path]:
    names = ("model.safetensors", "pytorch_model.bin")
    shards = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
    found = [directory / name for name in names if (directory / name).is_file()]
    return sorted(found + [path for pattern in shards for path in directory.glob(pattern)])


def digest(files: Sequence[Path]) -> str:
    """sha256 of the weight files (names and bytes), first 16 hex digits."""
    hasher = hashlib.sha256()
    for path in files:
        hasher.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    return hasher.hexdigest()[:16]


def locate(path: str | os.PathLike | None) -> tuple[Path, list[Path]]:
    """The weights directory (``path``, else FM_CLIP_PATH) and its weight files; one line when either is missing."""
    path = path or os.environ.get(ENV_PATH)
    if not path:
        raise FMError(f"the clip text encoder needs a local directory of CLIP weights: {WHERE}")
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise FMError(f"no CLIP text encoder at {directory} (not a directory): {WHERE}")
    return directory, contents(directory)


def contents(directory: Path) -> list[Path]:
    """The weight files of a CLIP directory, checked to hold a config and a tokenizer too."""
    files = weight_files(directory)
    tokenizer = (directory / "tokenizer.json").is_file() or all(
        (directory / name).is_file() for name in ("vocab.json", "merges.txt")
    )
    for present, missing in (
        (files, "weights (model.safetensors or pytorch_model.bin)"),
        ((directory / "config.json").is_file(), "config.json"),
        (tokenizer, "tokenizer (vocab.json and merges.txt, or tokenizer.json)"),
    ):
        if not present:
            raise FMError(f"{directory} holds no CLIP {missing}: {WHERE}")
    return files


def projection_width(directory: Path, files: Sequence[Path]) -> int | None:
    """The width of the checkpoint's text projection, None without one (safetensors: the weight's shape; otherwise
    config.json: a CLIPModel's or a CLIPTextModelWithProjection's projection_dim)."""
    tensors = [path for path in files if path.suffix == ".safetensors"]
    if tensors:
        from safetensors import safe_open

        for path in tensors:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if key.endswith("text_projection.weight"):
                        return int(handle.get_slice(key).get_shape()[0])
        return None
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    architectures = config.get("architectures") or []
    if "CLIPModel" in architectures or "CLIPTextModelWithProjection" in architectures:
        return config.get("projection_dim", 512)
    return None


class RowCache:
    """Row bytes -> (valid token embeddings, pooled vector, valid count), on the CPU, up to ``limit`` bytes; when full,
    new rows are not kept (with captions seen in the same order every epoch, evicting would keep nothing useful)."""

    def __init__(self, limit: int):
        self.rows: dict[bytes, tuple[Tensor, Tensor, int]] = {}
        self.limit, self.size = limit, 0

    def get(self, key: bytes) -> tuple[Tensor, Tensor, int] | None:
        return self.rows.get(key)

    def put(self, key: bytes, entry: tuple[Tensor, Tensor, int]) -> None:
        size = entry[0].nbytes + entry[1].nbytes + len(key)
        if self.size + size <= self.limit:
            self.rows[key], self.size = entry, self.size + size

    def clear(self) -> None:
        self.rows.clear()
        self.size = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: bytes) -> bool:
        return key in self.rows


class ClipTextEncoder(TextEncoder):
    name = "clip"
    trainable = False

    def __init__(self, directory: Path, files: Sequence[Path], context: int = DEFAULT_CONTEXT, cache_mb: float = 2048):
        super().__init__()
        if not isinstance(context, int) or isinstance(context, bool) or context < 2:
            raise FMError(f"clip text encoder: context must be an integer >= 2, not {context!r}")
        if not isinstance(cache_mb, (int, float)) or isinstance(cache_mb, bool) or cache_mb < 0:
            raise FMError(f"clip text encoder: cache_mb must be a number >= 0, not {cache_mb!r}")
        transformers = transformers_module()
        try:
            projected = projection_width(directory, files)
            with quiet(transformers):
                tokenizer_class = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
                tokenizer = tokenizer_class.from_pretrained(str(directory), local_files_only=True)
                config = transformers.CLIPTextConfig.from_pretrained(str(directory), local_files_only=True)
                width = config.hidden_size
                projection = projected == width  # a projection to another width: pooled must be D wide, so not used
                if projection:  # (a CLIPModel keeps projection_dim beside its text config, not in it)
                    config.projection_dim = width
                    model_class = transformers.CLIPTextModelWithProjection
                else:
                    model_class = transformers.CLIPTextModel
                model = model_class.from_pretrained(str(directory), config=config, local_files_only=True)
        except Exception as error:  # noqa: BLE001 - whatever transformers or safetensors make of a broken directory
            reason = " ".join(str(error).split())[:300]
            raise FMError(f"could not load the CLIP text encoder from {directory} ({reason}): {WHERE}") from None
        model.eval().requires_grad_(False)
        # Not registered as a submodule: frozen weights stay out of the velocity model's state dict and optimizer.
        object.__setattr__(self, "clip_model", model)
        self.tokenizer, self.projection, self.directory, self.files = tokenizer, projection, directory, list(files)
        self.context = min(context, config.max_position_embeddings)
        self.width = width
        self.digest = digest(self.files)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.unk_id = tokenizer.unk_token_id
        self.cache = RowCache(int(cache_mb * 2**20))
        self.encoded = 0  # rows CLIP has encoded (the cache's misses)
        self.empty_row = self.clip_rows([""], empty_as_pad=False)[0]

    def clip_rows(self, prompts: Sequence[str], empty_as_pad: bool = True) -> Tensor:
        if not prompts:
            return torch.zeros(0, self.context, dtype=torch.int64)
        with quiet(transformers_module()):
            encoding = self.tokenizer(
                list(prompts),
                padding="max_length",
                max_length=self.context,
                truncation=True,
                return_attention_mask=True,
            )
        ids = torch.tensor(encoding["input_ids"], dtype=torch.int64) + 1  # 0 is ours: padding
        ids[torch.tensor(encoding["attention_mask"]) == 0] = PAD
        if empty_as_pad:
            ids[[not prompt.strip() for prompt in prompts]] = PAD
        return ids

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        return self.clip_rows([prompts] if isinstance(prompts, str) else prompts)

    def encode(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """CLIP on these rows (our ids), in float32 without gradients: (hidden states, pooled, attention mask)."""
        rows = rows.clone()
        rows[(rows == PAD).all(dim=1)] = self.empty_row[: rows.shape[1]]
        mask = rows != PAD
        ids = torch.where(mask, rows - 1, torch.full_like(rows, self.pad_id))
        device = next(self.clip_model.parameters()).device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            output = self.clip_model(input_ids=ids.to(device), attention_mask=mask.to(device, torch.int64))
        pooled = output.text_embeds if self.projection else output.pooler_output
        self.encoded += len(rows)
        return output.last_hidden_state.float().cpu(), pooled.float().cpu(), mask

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ids [B, L'] (L' <= context) -> tokens [B, L', D] (zero where the mask is False), pooled [B, D], mask."""
        check_ids(self, ids)
        rows = ids.detach().to("cpu", torch.int64)
        keys = [row.numpy().tobytes() for row in rows]
        fresh: dict[bytes, int] = {}  # rows to encode -> their first index in the batch
        for index, key in enumerate(keys):
            if key not in self.cache and key not in fresh:
                fresh[key] = index
        computed = {}
        if fresh:
            hidden, pooled, mask = self.encode(rows[list(fresh.values())])
            for position, key in enumerate(fresh):
                valid = int(mask[position].sum())
                computed[key] = (hidden[position, :valid].clone(), pooled[position].clone(), valid)
                self.cache.put(key, computed[key])
        tokens = torch.zeros(len(keys), rows.shape[1], self.width)
        pooled = torch.empty(len(keys), self.width)
        mask = torch.zeros(len(keys), rows.shape[1], dtype=torch.bool)
        for index, key in enumerate(keys):
            hidden, vector, valid = self.cache.get(key) or computed[key]
            tokens[index, :valid], pooled[index], mask[index, :valid] = hidden, vector, True
        device = ids.device
        return tokens.to(device), pooled.to(device), mask.to(device)

    def export(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.directory),
            "digest": self.digest,
            "context": self.context,
            "width": self.width,
        }

    def unknown_words(self, prompts: Sequence[str]) -> tuple[int, list[str]]:
        """Words (split at spaces) with a piece CLIP's vocabulary lacks; byte-level BPE knows every word, so this is
        (0, []) for a real CLIP tokenizer."""
        known: dict[str, bool] = {}
        count, examples = 0, []
        with quiet(transformers_module()):
            for prompt in [prompts] if isinstance(prompts, str) else prompts:
                for word in prompt.split():
                    if word not in known:
                        pieces = self.tokenizer(word, add_special_tokens=False)["input_ids"]
                        known[word] = self.unk_id is None or self.unk_id not in pieces
                    if not known[word]:
                        count += 1
                        if len(examples) < EXAMPLES and word not in examples:
                            examples.append(word)
        return count, examples

    def truncated(self, prompts: Sequence[str]) -> int:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return 0
        with quiet(transformers_module()):
            lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        return sum(length > self.context for length in lengths)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` and dtype changes move the frozen CLIP model too (it is no submodule)."""
        super()._apply(fn, recurse)
        self.clip_model._apply(fn)
        self.cache.clear()
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip_model.eval()  # frozen: never dropout
        return self

    def __deepcopy__(self, memo):
        """A copy (an EMA model, say) shares the frozen CLIP model, its tokenizer and the cache: none of them trains."""
        for shared in (self.clip_model, self.tokenizer, self.cache):
            memo[id(shared)] = shared
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            object.__setattr__(clone, key, copy.deepcopy(value, memo))
        return clone


def options_of(options: dict) -> dict:
    options = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise FMError(f"clip text encoder: unknown option {unknown[0]!r} (known: {', '.join(OPTIONS)})")
    return options


def build(captions: Sequence[str] = (), **options) -> ClipTextEncoder:
    """CLIP from ``options["path"]`` (else FM_CLIP_PATH); ``context`` (77 at most, CLIP's positions) and ``cache_mb``
    are optional. The captions are not needed: CLIP's vocabulary is its own."""
    options = options_of(options)
    transformers_module()  # the install hint before any complaint about paths
    directory, files = locate(options.pop("path", None))
    return ClipTextEncoder(directory, files, **options)


def restore(exported: dict, **options) -> ClipTextEncoder:
    """The encoder a checkpoint was trained with: the same weights (by digest), found at the recorded path or at
    FM_CLIP_PATH; one line when they are gone or changed."""
    options = options_of(options)
    transformers_module()
    want = exported.get("digest")
    candidates = [options.pop("path", None), exported.get("path"), os.environ.get(ENV_PATH)]
    seen = []
    for candidate in filter(None, candidates):
        directory = Path(candidate).expanduser().resolve()
        files = weight_files(directory) if directory.is_dir() else []
        if not files or directory in (place for place, _ in seen):
            continue
        found = digest(files)
        seen.append((directory, found))
        if want is None or found == want:
            context = options.pop("context", exported.get("context", DEFAULT_CONTEXT))
            encoder = ClipTextEncoder(directory, contents(directory), context=context, **options)
            if "width" in exported and encoder.width != exported["width"]:
                raise FMError(f"the CLIP text encoder at {directory} is {encoder.width} wide, not {exported['width']}")
            return encoder
    recorded = exported.get("path", "?")
    if seen:
        places = ", ".join(f"{place} has {found}" for place, found in seen)
        raise FMError(
            f"the CLIP weights changed since this model was trained (digest {want}; {places}): restore them, "
            f"or set FM_CLIP_PATH to a copy of the original"
        )
    raise FMError(
        f"the CLIP weights this model was trained with are gone from {recorded} (digest {want}): put them back, or "
        f"set FM_CLIP_PATH to a copy"
    )
