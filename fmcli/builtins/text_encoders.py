"""Built-in text encoders for captioned data: ``builtin`` (trained from scratch with the velocity network, offline) and
``clip`` (a frozen CLIP text tower from a local directory). Implementations live in ``fmcli.text``, imported on use."""

from fmcli.hookspecs import hookimpl
from fmcli.specs import TextEncoderSpec, lazy_callable


@hookimpl
def fm_register_text_encoders(register):
    register(
        TextEncoderSpec(
            name="builtin",
            description="a small transformer (2 layers, width 128) over a word vocabulary taken from the training "
            "captions, trained jointly with the velocity network; needs no download (default)",
            build=lazy_callable("fmcli.text.builtin:build"),
            restore=lazy_callable("fmcli.text.builtin:restore"),
        )
    )
    register(
        TextEncoderSpec(
            name="clip",
            description="a frozen CLIP text tower loaded from a local directory saved with save_pretrained "
            "(--text-encoder-path or FM_CLIP_PATH; never downloads); needs pip install 'fmcli[clip]'",
            build=lazy_callable("fmcli.text.clip:build"),
            restore=lazy_callable("fmcli.text.clip:restore"),
            requires="transformers",
            install="pip install 'fmcli[clip]'",
        )
    )
