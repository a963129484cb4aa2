"""Pipeline stages that are not indexes: fusion now; every stage is a Retriever."""

from genseek.retrievers.fusion import LinearFusion, RRFusion

__all__ = ["LinearFusion", "RRFusion"]
