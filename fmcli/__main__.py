"""``python -m fmcli`` runs the CLI; torchrun uses it: ``torchrun --nproc_per_node=2 -m fmcli train ...``."""

from fmcli.cli import main

if __name__ == "__main__":
    main()
