"""Command-line entry point: `python -m alpeft_jax.main --config=configs/<name>.py --workdir=DIR`."""

import sys


def main() -> None:
    """Run the active-learning driver (available once the driver lands)."""
    print("alpeft_jax: the active-learning driver is not yet available; see README.md.")
    sys.exit(0)


if __name__ == "__main__":
    main()
