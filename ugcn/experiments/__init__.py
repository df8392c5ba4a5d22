"""Experiments: runs that train networks and compare methods, built on the library below them.

* :mod:`ugcn.experiments.demo` — the demos of ``ugcn demo`` (method R on CT phantoms, method L on brain
  phantoms).
* :mod:`ugcn.experiments.lesion_protocol` — method L's k-fold protocol (a U-Net per fold, MC dropout,
  lesion methods fitted on validation lesions, scored on test lesions).
* :mod:`ugcn.experiments.estimator_study` — every uncertainty estimator on the same samples: voxel error
  detection, calibration, method R and method L (``ugcn estimators compare``).

An experiment may import any method; no method, ``evaluate`` or the core imports an experiment. The
sub-modules are not imported here, so ``import ugcn.experiments`` stays cheap.
"""
