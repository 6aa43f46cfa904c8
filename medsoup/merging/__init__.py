"""The papers' algorithms and weight-space tools, as pure functions over state dicts and modules
with thin classes where state is real: state-dict arithmetic, soups, FGG snapshots, InMerge,
MedMerge, loss landscapes, kernel similarity and permutation alignment. No run plans, no chapter
settings."""
