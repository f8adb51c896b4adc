"""saeops data plane: spec models, dictionaries, activations, training, storage."""
