"""`python -m align_recipes …` is the same as the `align-recipes` command."""

from align_recipes.cli import main

raise SystemExit(main())
