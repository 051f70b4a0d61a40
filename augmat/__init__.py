"""augmat: materialize augmented image datasets offline, then stream them into Keras."""

__version__ = "0.1.0"
