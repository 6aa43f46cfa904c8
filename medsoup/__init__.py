"""medsoup: model merging for medical image classification (InMerge, FissionFusion, MedMerge)."""

__version__ = "0.1.0"
