"""Training from a checkout: ``python run.py [overrides]``, the same as ``gigpo-train [overrides]``.

The Hydra entry point lives in gigpo/cli.py so that an installed wheel has it too.
"""

from gigpo.cli import main

if __name__ == "__main__":
    main()
