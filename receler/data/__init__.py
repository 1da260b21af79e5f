"""Package data: ``concept_vocabulary.csv``, the everyday concepts the preserved-concept generator ranks."""
