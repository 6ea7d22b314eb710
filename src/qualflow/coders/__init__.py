"""Coders: anything that assigns code sets to passages (see ``coders.base``)."""
