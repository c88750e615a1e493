"""`python -m esft.cli` (as torchrun launches it): the `esft` command."""

from esft.cli import main

if __name__ == "__main__":
    main()
