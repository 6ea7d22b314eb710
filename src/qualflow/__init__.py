"""qualflow: LLM-assisted qualitative coding of interview studies.

The data path runs one way: transcript -> passage -> candidates -> proposal ->
decision -> agreement. See AGENTS.md for a map of the modules.
"""

__version__ = "0.1.0"
