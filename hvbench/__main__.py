"""`python -m hvbench` and `accelerate launch -m hvbench` both land here."""

from hvbench.cli import main

if __name__ == "__main__":
    main()
