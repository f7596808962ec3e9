"""What is in a folder of images before anything is decoded: its classes, its files, and the checks.

Shared by the in-memory loader (``fmcli.data.folder``) and the decoded cache (``fmcli.data.cache``); see
``fmcli.data.folder`` for the rules (classes = sub-folders, sorted; hidden files skipped).
"""

from dataclasses import dataclass
from pathlib import Path

from fmcli.data.base import LoadOptions
from fmcli.data.decode import DEFAULT_IMAGE_SIZE, IMAGE_EXTENSIONS, image_files, is_image_name
from fmcli.errors import FMError

MIN_IMAGE_SIZE = 8
MAX_LISTED_SKIPS = 5


@dataclass
class FolderListing:
    """What is in a folder before anything is decoded: the classes and their files, in label order."""

    root: Path
    groups: list[tuple[str, list[Path]]]  # (class name, sorted files); one ("", files) group when unlabelled
    labelled: bool
    ignored: list[Path]  # images at the top level next to class folders (not loaded, only counted)

    @property
    def paths(self) -> list[Path]:
        return [p for _, files in self.groups for p in files]


def check_folder(path: str | Path, options: LoadOptions) -> tuple[Path, int]:
    """The folder (``~`` expanded) and the image size, or the one-line error that says what is wrong."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FMError(f"no folder at {path}: give an existing folder of images or a data set name")
    if not root.is_dir():
        raise FMError(f"{path} is a file, not a folder: give a folder of images or a data set name")
    if options.channels not in (None, 1, 3):
        raise FMError(f"channels must be 1 or 3, not {options.channels}")
    size = options.image_size or DEFAULT_IMAGE_SIZE
    if size < MIN_IMAGE_SIZE:
        raise FMError(f"image size must be at least {MIN_IMAGE_SIZE} pixels for a folder of images (got {size})")
    return root, size


def list_folder(root: Path, path: str | Path | None = None) -> FolderListing:
    """The classes and image files under ``root`` (see the module docstring); errors when there is no image."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        groups = [(d.name, image_files(d)) for d in class_dirs]
        ignored = sorted(f for f in root.iterdir() if f.is_file() and is_image_name(f.name))
    else:
        groups = [("", image_files(root))]
        ignored = []
    listing = FolderListing(root=root, groups=groups, labelled=bool(class_dirs), ignored=ignored)
    if not listing.paths:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise FMError(f"no image files under {path or root} (looked recursively for {kinds})")
    return listing


def none_readable(path: str | Path, count: int, first_skipped: str) -> FMError:
    return FMError(f"none of the {count} image files under {path} could be read (e.g. {first_skipped})")
