"""Parts of the end-to-end fit benchmark, run by ``benchmarks/bench_fit_gpu.py`` (its docstring tells the method).

* :mod:`config`: the modes, SegFormer-B0's shape, :class:`FitBenchConfig` and the size presets;
* :mod:`scene`: procedural frames in the Cityscapes layout and a procedural outlier bank, on disk;
* :mod:`pipeline`: the recipe's model, its DataModule and the in-memory batches of mode ``a``;
* :mod:`timing`: the step-stamping callback and one timed fit;
* :mod:`run`: rounds of every mode, the JSON record and its table.
"""
