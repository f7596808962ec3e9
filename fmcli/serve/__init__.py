"""``fm serve``: a local web page (Gradio) to sample from the checkpoints under one folder.

    limits.py    what one request may ask for (images, steps, resolution, evaluations), checked on the server
    catalog.py   the checkpoints under the served folder, by name: the only files the page can open
    render.py    one setting of a request -> grid PNG, GIF, NPZ and caption, through the Python API's ``Model``
    app.py       the page and its handlers (Gradio is imported inside its functions only)
    server.py    offline settings, listening on localhost, loading torch after the page answers, start-up errors

Safe by default: 127.0.0.1 only, no share link, nothing fetched from or sent to the internet, request sizes
capped, and no string from the page is ever joined to a path (names are looked up in the catalog's table).

May import: ``fmcli.sampling``, ``fmcli.io``, ``fmcli.registry``, ``fmcli.device``, ``fmcli.errors``, and Gradio
(the ``serve`` extra) inside functions. Never the CLI; ``fmcli/cli/serve.py`` is the thin Typer command, and
nothing here is imported by ``fm --help``.
"""
