"""vmchecker: an automated grading service for programming assignments."""

__version__ = "0.1.0"
