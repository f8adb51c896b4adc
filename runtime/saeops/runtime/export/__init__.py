"""Export of trained dictionaries to other libraries' formats (SAELens)."""

from saeops.runtime.export.saelens import ExportError, export_saelens, import_saelens

__all__ = ["ExportError", "export_saelens", "import_saelens"]
