"""Self-supervised pretraining of ViTs with a crop-tied position field (see docs/method.md)."""
