"""`python -m tasktune ...` (also what accelerate launch / torchrun run)."""

from tasktune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
