"""``python -m instasal.cli``: the same as the ``instasal`` executable."""

from instasal.cli import main

main()
