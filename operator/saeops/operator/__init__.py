"""saeops control plane: kopf operator, reconcilers, renderers. Imports no torch."""
