"""Quality and speed harnesses; each writes JSON under ``benchmarks/results`` and ``benchmarks.report``
turns those files into ``benchmarks/RESULTS.md``, so every published figure comes from a recorded run."""
