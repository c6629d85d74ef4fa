"""Claims mapping: vendor presets and a closed set of typed rules turn upstream attributes into a Profile.

rules.py (the rules, compiled at save time), patterns.py (safe regexes), presets.py (vendor defaults),
subject.py (the stable `sub`), pipeline.py (compile_mapping, apply, explain). Pure code: no I/O, no Flask.
"""
