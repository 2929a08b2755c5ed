"""homegpt: create your own GPT from scratch — plan, tokenizer, prepare, train, eval, sample."""

__version__ = "0.1.0"
