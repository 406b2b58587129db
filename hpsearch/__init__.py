"""hpsearch: resumable hyperparameter search for token-classification (NER) trainers."""

__version__ = "0.1.0"
