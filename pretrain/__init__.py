"""Self-supervised pretraining of ViTs with a crop-tied position field (see SPEC §2)."""
