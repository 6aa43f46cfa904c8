"""The papers' algorithms and weight-space tools, as pure functions over state dicts and modules
with thin classes where state is real: state-dict arithmetic, soups, FGG snapshots, InMerge,
MedMerge, loss landscapes and kernel similarity. No run plans, no chapter settings."""
