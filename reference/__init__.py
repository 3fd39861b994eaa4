"""A NumPy-only oracle of jaxbp's algorithm. Imports nothing from jaxbp or JAX."""
