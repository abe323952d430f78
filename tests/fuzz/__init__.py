"""Coverage-guided fuzzing of the parsers that read what peers send (``make fuzz``)."""
