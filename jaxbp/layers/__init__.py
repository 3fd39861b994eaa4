"""Built-in layers, one small module per family."""
