"""align-recipes: reproducible LLM alignment from one YAML recipe, on Hugging Face TRL."""

from align_recipes.deferred import defer_optional_imports

__version__ = "0.1.0"

defer_optional_imports()  # before anything imports transformers (see deferred.py)
