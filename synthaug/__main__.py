"""`python -m synthaug` runs the command-line interface."""

from synthaug.cli import main

main()
